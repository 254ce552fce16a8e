"""A stand-in Hugging Face Hub on loopback: the HTTP calls huggingface_hub 0.36 makes to create a
repo, commit files in 'regular' mode (no LFS or xet), read repo info with file hashes, make a
branch and download files (hf_hub_download / snapshot_download, which circuit-tracer uses).

There is no self-hostable hub that is practical in a test, so this implements the wire format
(see ../shared/reference/next-stages.md §3) with the standard library (and PyYAML for the
model card check). Blobs are stored
content-addressed and each branch's current tree is also written out under
``<root>/trees/<owner>/<name>/<branch>/`` so a test can compare the exact bytes that arrived.

Tokens: ``WRITE_TOKEN`` may write, ``READ_TOKEN`` may only read (writes get 403), anything else
gets 401. ``fail(prefix, status)`` makes the next request whose "METHOD /path" starts with
`prefix` answer `status` once. ``requests`` records every "METHOD /path" served. ``create`` and
``push`` stand for other writers: a repo someone else made (public or private, with their
files), and a commit of theirs to a repo the upload published.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

WRITE_TOKEN = "hf_stand_in_write"
READ_TOKEN = "hf_stand_in_read"
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    message: str
    files: dict[str, str]  # path -> blob id
    operations: list[tuple[str, str]]  # (added|deleted, path)


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, list[Commit]] = field(default_factory=dict)

    def head(self, revision: str) -> Commit | None:
        if revision in self.branches:
            return self.branches[revision][-1]
        for commits in self.branches.values():
            for commit in commits:
                if commit.oid == revision:
                    return commit
        return None


class StandInHub:
    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.repos: dict[str, Repo] = {}
        self.requests: list[str] = []
        self.failures: list[tuple[str, int]] = []
        self.cards: list[str] = []  # every README.md content sent to /api/validate-yaml
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> StandInHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail(self, prefix: str, status: int) -> None:
        self.failures.append((prefix, status))

    def commits(self, repo_id: str, branch: str = "main") -> list[Commit]:
        return self.repos[repo_id].branches[branch]

    def tree(self, repo_id: str, branch: str = "main") -> Path:
        return self.root / "trees" / repo_id / branch

    def blob(self, oid: str) -> bytes:
        return (self.root / "blobs" / oid).read_bytes()

    # ------------------------------------------------------------------ state changes

    def create(self, repo_id: str, files: dict[str, bytes] | None = None, private: bool = False) -> Repo:
        """A repo made by someone else than the upload under test (as the Hub makes it), holding `files`."""
        with self.lock:
            repo = self.repos[repo_id] = Repo(repo_id, private)
            self.commit(repo, "main", "initial commit", {".gitattributes": GITATTRIBUTES}, [])
        if files:
            self.push(repo_id, files)
        return repo

    def push(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> Commit:
        """Another writer's commit (the owner adding a file through the web page, say)."""
        with self.lock:
            return self.commit(self.repos[repo_id], branch, "an upload by someone else", files, [])

    def store(self, data: bytes) -> str:
        oid = git_sha1(data)
        path = self.root / "blobs" / oid
        if not path.exists():
            path.write_bytes(data)
        return oid

    def commit(self, repo: Repo, branch: str, message: str, added: dict[str, bytes], deleted: list[str]) -> Commit:
        parent = repo.branches[branch][-1] if repo.branches.get(branch) else None
        files = dict(parent.files) if parent else {}
        operations = []
        for path, data in added.items():
            files[path] = self.store(data)
            operations.append(("added", path))
        for path in deleted:
            files.pop(path)
            operations.append(("deleted", path))
        oid = hashlib.sha1(json.dumps([parent.oid if parent else None, message, sorted(files.items())])
                           .encode()).hexdigest()
        commit = Commit(oid, message, files, operations)
        repo.branches.setdefault(branch, []).append(commit)
        self.materialize(repo.repo_id, branch, commit)
        return commit

    def materialize(self, repo_id: str, branch: str, commit: Commit) -> None:
        tree = self.tree(repo_id, branch)
        if tree.exists():
            shutil.rmtree(tree)
        for path, oid in commit.files.items():
            (tree / path).parent.mkdir(parents=True, exist_ok=True)
            (tree / path).write_bytes(self.blob(oid))


def _handler(hub: StandInHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        # -------------------------------------------------------------- plumbing

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
                  content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, data, headers: dict | None = None) -> None:
            self._send(status, json.dumps(data).encode(), headers)

        def _error(self, status: int, message: str, code: str | None = None) -> None:
            headers = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {})}
            self._json(status, {"error": message}, headers)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _authorised(self, write: bool) -> bool:
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
            if token not in (WRITE_TOKEN, READ_TOKEN):
                if write or token:
                    self._error(401, "Invalid credentials in Authorization header")
                    return False
            elif write and token != WRITE_TOKEN:
                self._error(403, "You don't have the rights to create or write to this repo")
                return False
            return True

        def _route(self) -> None:
            url = urlsplit(self.path)
            self.query = parse_qs(url.query)
            line = f"{self.command} {url.path}"
            with hub.lock:
                hub.requests.append(line)
                for i, (prefix, status) in enumerate(hub.failures):
                    if line.startswith(prefix):
                        del hub.failures[i]
                        self._error(status, f"injected failure {status}")
                        return
                parts = [unquote(p) for p in url.path.strip("/").split("/")]
                try:
                    self._dispatch(parts)
                except Exception as error:  # a bug here must show as a 500, not a hang
                    self._error(500, f"stand-in hub error: {type(error).__name__}: {error}")

        do_GET = do_POST = do_HEAD = _route

        def _repo(self, repo_id: str) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, f"Repository {repo_id} not found", "RepoNotFound")
            return repo

        # -------------------------------------------------------------- routes

        def _dispatch(self, parts: list[str]) -> None:
            method = self.command
            if method == "POST" and parts[:3] == ["api", "repos", "create"]:
                return self._create_repo()
            if method == "POST" and parts[:2] == ["api", "validate-yaml"]:
                return self._validate_yaml()
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo_id, rest = "/".join(parts[2:4]), parts[4:]
                if method == "GET" and not rest:
                    return self._info(repo_id, "main")
                if method == "GET" and rest[:1] == ["revision"]:
                    return self._info(repo_id, "/".join(rest[1:]))
                if method == "POST" and rest[:1] == ["preupload"]:
                    return self._preupload(repo_id, "/".join(rest[1:]))
                if method == "POST" and rest[:1] == ["commit"]:
                    return self._commit(repo_id, "/".join(rest[1:]))
                if method == "POST" and rest[:1] == ["branch"]:
                    return self._branch(repo_id, "/".join(rest[1:]))
            if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
            self._error(404, f"no route for {method} {'/'.join(parts)}")

        def _create_repo(self) -> None:
            if not self._authorised(write=True):
                return
            body = json.loads(self._body() or b"{}")
            repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
            if repo_id in hub.repos:  # the Hub names the existing repo's URL
                message = "You already created this model repo"
                return self._json(409, {"error": message, "url": f"{hub.endpoint}/{repo_id}"},
                                  {"X-Error-Message": message})
            repo = hub.repos[repo_id] = Repo(repo_id, bool(body.get("private")))
            hub.commit(repo, "main", "initial commit", {".gitattributes": GITATTRIBUTES}, [])
            self._json(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})

        def _validate_yaml(self) -> None:
            """The model card's metadata block must be a YAML mapping (what the Hub checks first)."""
            content = json.loads(self._body())["content"]
            hub.cards.append(content)
            if not content.startswith("---\n") or "\n---\n" not in content[4:]:
                return self._json(400, {"errors": [{"message": "no YAML metadata block"}]})
            metadata = yaml.safe_load(content[4:content.index("\n---\n", 4)])
            if not isinstance(metadata, dict):
                return self._json(400, {"errors": [{"message": "metadata is not a mapping"}]})
            self._json(200, {"warnings": []})

        def _info(self, repo_id: str, revision: str) -> None:
            if not self._authorised(write=False) or (repo := self._repo(repo_id)) is None:
                return
            commit = repo.head(revision)
            if commit is None:
                return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            blobs = "blobs" in self.query
            siblings = [{"rfilename": path, **({"size": len(hub.blob(oid)), "blobId": oid} if blobs else {})}
                        for path, oid in sorted(commit.files.items())]
            self._json(200, {"id": repo_id, "modelId": repo_id, "sha": commit.oid, "private": repo.private,
                             "gated": False, "disabled": False, "tags": [], "siblings": siblings})

        def _preupload(self, repo_id: str, revision: str) -> None:
            if not self._authorised(write=True) or (repo := self._repo(repo_id)) is None:
                return
            commit = repo.head(revision)
            files = []
            for entry in json.loads(self._body())["files"]:
                oid = commit.files.get(entry["path"]) if commit else None
                files.append({"path": entry["path"], "uploadMode": "regular", "shouldIgnore": False,
                              **({"oid": oid} if oid else {})})
            self._json(200, {"files": files, "commitOid": commit.oid if commit else None})

        def _commit(self, repo_id: str, revision: str) -> None:
            if not self._authorised(write=True) or (repo := self._repo(repo_id)) is None:
                return
            if revision not in repo.branches:
                return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
            header = lines[0]["value"] if lines and lines[0]["key"] == "header" else None
            if header is None:
                return self._error(400, "the commit body must start with a header line")
            parent = header.get("parentCommit")
            if parent and parent != repo.branches[revision][-1].oid:
                return self._error(412, "A commit has happened since. Please refresh and try again.")
            added, deleted = {}, []
            for line in lines[1:]:
                value = line["value"]
                if line["key"] == "file" and value.get("encoding") == "base64":
                    added[value["path"]] = base64.b64decode(value["content"])
                elif line["key"] == "deletedFile":
                    deleted.append(value["path"])
                else:
                    return self._error(400, f"the stand-in hub takes regular files only, not {line['key']}")
            commit = hub.commit(repo, revision, header["summary"], added, deleted)
            self._json(200, {"success": True, "commitOid": commit.oid, "hookOutput": "",
                             "commitUrl": f"{hub.endpoint}/{repo_id}/commit/{commit.oid}"})

        def _branch(self, repo_id: str, branch: str) -> None:
            if not self._authorised(write=True) or (repo := self._repo(repo_id)) is None:
                return
            if branch in repo.branches:
                return self._error(409, f"Branch {branch} already exists")
            start = json.loads(self._body() or b"{}").get("startingPoint") or "main"
            repo.branches[branch] = [repo.head(start)]
            hub.materialize(repo_id, branch, repo.branches[branch][-1])
            self._json(200, {})

        def _resolve(self, repo_id: str, revision: str, path: str) -> None:
            if not self._authorised(write=False) or (repo := self._repo(repo_id)) is None:
                return
            commit = repo.head(revision)
            if commit is None:
                return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            oid = commit.files.get(path)
            if oid is None:
                return self._error(404, f"Entry not found: {path}", "EntryNotFound")
            data = hub.blob(oid)
            self._send(200, data, {"X-Repo-Commit": commit.oid, "ETag": f'"{oid}"'},
                       content_type="application/octet-stream")

    return Handler


def hub_env(hub: StandInHub, home: Path, token: str | None = WRITE_TOKEN) -> dict:
    # HF_HOME: no stored login of the machine is found; the token comes from HF_TOKEN alone.
    return {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": str(home),
            "HF_TOKEN": token or "", "HF_HUB_DISABLE_TELEMETRY": "1"}


def load_from_hub(env: dict, repo: str, local_set: Path) -> dict:
    """circuit-tracer's own loader, in a fresh process that sees only the stand-in hub: the set
    loaded from the repo must equal the one it loads from the local folder, tensor for tensor."""
    script = textwrap.dedent(f"""
        import json, torch
        from circuit_tracer.utils.hf_utils import load_transcoder_from_hub
        kwargs = dict(device=torch.device("cpu"), lazy_encoder=False, lazy_decoder=False)
        published, config = load_transcoder_from_hub({repo!r}, **kwargs)
        local, _ = load_transcoder_from_hub({str(local_set)!r}, **kwargs)
        ours, theirs = local.state_dict(), published.state_dict()
        print(json.dumps({{"scan": published.scan, "kind": type(published).__name__, "tensors": len(ours),
                          "same": sorted(ours) == sorted(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours),
                          "model_name": config["model_name"]}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
