"""A persistent response cache: SQLite, one file per LLM job, held by that job alone.

Each job has its own file (circuitflow.paths: ``interp/llm-cache/<stage>-<unit>.sqlite``) and
opens it in exclusive locking mode, so SQLite never creates the shared-memory index of WAL mode,
the part that fails over NFS and other network file systems: a cluster job on any node can keep
its cache beside the run's results. A second process opening a file in use waits, then fails.

Keyed by a sha256 of the model's identity, the messages and the sampling parameters (never the
endpoint's key), so a crashed or rerun job repays nothing it already received. Each reply is
committed as soon as it arrives. The identity (chosen by circuitflow.llm.client and .judge) is
the served model name together with the endpoint's URL (without credentials), or the local
GGUF's content hash, so two servers or two GGUFs never answer for each other. Entries written
under the older keys (the model name alone, or the GGUF's file name and size) simply stop
matching and are asked again.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    reply TEXT NOT NULL,
    usage TEXT NOT NULL,
    created REAL NOT NULL
)
"""
# A file's sha256, remembered for as long as its path, size and modification time stay the same.
FILE_DIGESTS = """
CREATE TABLE IF NOT EXISTS file_digests (
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (path, size, mtime_ns)
)
"""


def request_key(model: str, messages: list[dict], sampling: dict) -> str:
    payload = json.dumps({"model": model, "messages": messages, "sampling": sampling},
                         sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class ResponseCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection, used from the event loop's thread; the lock guards any other caller.
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            # Exclusive before WAL: no -shm shared-memory index, so no cross-host locking is needed.
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(SCHEMA)
            self._db.execute(FILE_DIGESTS)

    def get(self, key: str) -> tuple[str, dict] | None:
        with self._lock:
            row = self._db.execute("SELECT reply, usage FROM replies WHERE key = ?", (key,)).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def put(self, key: str, model: str, request: dict, reply: str, usage: dict) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO replies (key, model, request, reply, usage, created) VALUES (?, ?, ?, ?, ?, ?)",
                (key, model, json.dumps(request, ensure_ascii=False), reply, json.dumps(usage), time.time()))

    def file_sha256(self, path: str | Path) -> str:
        """The file's content hash, computed once per path, size and mtime and remembered here
        (a GGUF is 100 MB or more; a sidecar beside it could sit in a read-only package folder)."""
        path = Path(path).resolve()
        stat = path.stat()
        where = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            row = self._db.execute("SELECT sha256 FROM file_digests WHERE path = ? AND size = ? AND mtime_ns = ?",
                                   where).fetchone()
        if row:
            return row[0]
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO file_digests (path, size, mtime_ns, sha256) VALUES (?, ?, ?, ?)",
                             (*where, digest.hexdigest()))
        return digest.hexdigest()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
