"""What a published file may say: no credentials, no private endpoints, no local paths.

The run's outputs name the judge by its endpoint (`llm.base_url`, which may carry a password or
point at a cluster's internal host), the corpus and the model by their local paths. The Hub repo
is public by default, so `shareable` rewrites these in the JSON the repo is built from:

- a URL's user and password, and query parameters that look like keys, are dropped;
- a URL whose host is loopback, private, link-local or an internal name (no dot, `.local`,
  `.internal`, ...) becomes "a private endpoint";
- paths under the working directory become relative, under the home directory `~/...`, and a
  value that is any other absolute path becomes its file name.

`leaks` finds what is left in a file that was copied as-is (graphs, architectures): the stage
refuses it rather than publish it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from circuitflow.io import relative_paths

PRIVATE_ENDPOINT = "a private endpoint"
URL = re.compile(r"\b(?:https?|wss?|file)://[^\s\"'<>`]+", re.IGNORECASE)
URL_TRAILER = ".,;:!?)]}"  # prose punctuation after a URL, not part of it
SECRET_PARAMETER = re.compile(r"key|token|secret|pass|auth|sig|credential", re.IGNORECASE)
INTERNAL_SUFFIXES = (".localhost", ".local", ".localdomain", ".internal", ".intranet", ".lan", ".corp",
                     ".home.arpa")
# A whole value that is an absolute path of at least two parts: '/data/corpus.jsonl', '~/m.gguf',
# 'C:\\models\\m.gguf' (one part, like '/' or '/n', is as likely a token of the corpus).
LOCAL_PATH = re.compile(r"^(?:~[/\\]|/[^/\s]+/|[A-Za-z]:[\\/][^\\/\s]+[\\/])\S*$")


def is_internal_host(host: str) -> bool:
    host = host.lower().rstrip(".")
    try:
        return not ipaddress.ip_address(host).is_global
    except ValueError:
        return "." not in host or host.endswith(INTERNAL_SUFFIXES)


def public_url(url: str) -> str:
    """`url` as it may be published (unchanged when nothing in it is private)."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "file":
        return PurePosixPath(parts.path).name or PRIVATE_ENDPOINT
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number: not a URL to publish
        return PRIVATE_ENDPOINT
    if not host or is_internal_host(host):
        return PRIVATE_ENDPOINT
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(key, value) for key, value in query if not SECRET_PARAMETER.search(key)]
    if "@" not in parts.netloc and len(kept) == len(query):
        return url
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(kept) if len(kept) < len(query) else parts.query,
                       parts.fragment))


def _public_urls(text: str) -> str:
    def replace(match: re.Match) -> str:
        url = match.group(0).rstrip(URL_TRAILER)
        return public_url(url) + match.group(0)[len(url):]

    return URL.sub(replace, text)


def _public_string(text: str, root: str, home: str | None) -> str:
    text = text.replace(f"{root}{os.sep}", "")
    if home:
        text = text.replace(f"{home}{os.sep}", f"~{os.sep}")
    if LOCAL_PATH.match(text):
        windows = re.match(r"^[A-Za-z]:", text)
        return (PureWindowsPath(text) if windows else PurePosixPath(text)).name
    return _public_urls(text) if "://" in text else text


def shareable(value: Any, root: str | os.PathLike) -> Any:
    """`value` (parsed JSON or YAML, at any depth) as it may be published from working directory `root`."""
    root = str(root)
    value = relative_paths(value, root)
    home = str(Path.home())
    home = home if len(Path(home).parts) > 1 else None
    return _walk(value, root, home)


def _walk(value: Any, root: str, home: str | None) -> Any:
    if isinstance(value, dict):
        return {key: _walk(item, root, home) for key, item in value.items()}
    if isinstance(value, list):
        return [_walk(item, root, home) for item in value]
    if isinstance(value, str):
        return _public_string(value, root, home)
    return value


def leaks(text: str, root: str | os.PathLike) -> str | None:
    """What `text` would publish that it must not (a local folder, a credential or a private
    endpoint in a URL), or None."""
    root, home = str(root), str(Path.home())
    for folder, what in ((root, "the working directory"), (home, "the home directory")):
        if len(Path(folder).parts) > 1 and f"{folder}{os.sep}" in text:
            return f"a path under {what} ({folder})"
    for match in URL.finditer(text):
        url = match.group(0).rstrip(URL_TRAILER)
        if public_url(url) != url:  # named without what is private in it: the message is logged
            parts = urlsplit(url)
            if "@" in parts.netloc:
                return "a URL with a user name or password"
            return f"a URL of {parts.scheme}://{parts.hostname or '?'} (an internal host, or a key in its query)"
    return None
