"""Logging for workflow scripts: everything (imports included) goes to the rule's log file."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time


def setup_logging(log_path: str | None = None, level: int = logging.INFO) -> logging.Logger:
    """Send the `circuitflow` logger, warnings and stderr to `log_path` (or keep stderr)."""
    if log_path:
        sys.stderr = open(log_path, "w", buffering=1, encoding="utf-8")  # noqa: SIM115
    logging.basicConfig(
        stream=sys.stderr,
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.captureWarnings(True)
    return logging.getLogger("circuitflow")


def start_job(snakemake, uses_torch: bool = True):
    """First call of every workflow script: log to the rule's log file, cap torch threads, and
    return the rule's settings rebuilt from its params (None for a rule without settings)."""
    from circuitflow.config import RULE_SETTINGS, from_params

    setup_logging(snakemake.log[0] if snakemake.log else None)
    exit_when_parent_dies()
    # An imported transcoder set is sized against the rule's memory before it is loaded
    # (circuitflow.transcoders.imported.require_memory).
    os.environ["CIRCUITFLOW_JOB_RULE"] = snakemake.rule
    mem_mb = getattr(snakemake.resources, "mem_mb", None)
    if isinstance(mem_mb, (int, float)):
        os.environ["CIRCUITFLOW_JOB_MEM_MB"] = str(mem_mb)
    if uses_torch:
        # Several jobs often share few cores: idle OpenMP threads should sleep, not spin
        # (measured: two competing 2-thread jobs ran 25 % faster). Must be set before torch loads.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import torch

        torch.set_num_threads(max(1, snakemake.threads))
    settings_class = RULE_SETTINGS.get(snakemake.rule)
    return from_params(settings_class, snakemake.params.settings) if settings_class else None


def exit_when_parent_dies(poll_s: float = 0.5) -> None:
    """Stop this job if the Snakemake process that started it dies (e.g. kill -9).

    An orphaned job would otherwise finish and write outputs that no Snakemake run records.
    A daemon thread watches the parent pid (a dead parent's children are re-parented); SIGTERM
    then raises SystemExit in the main thread, so `atomic_path` blocks remove their partials
    and never rename them into place.
    """
    parent = os.getppid()
    if parent <= 1:
        return

    def on_term(signum, frame):
        raise SystemExit(f"stopped by signal {signum}: the Snakemake process that started this job is gone")

    def watch():
        while os.getppid() == parent:
            time.sleep(poll_s)
        logging.getLogger("circuitflow").error("parent process %d died: stopping this job", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    threading.Thread(target=watch, name="circuitflow-parent-watch", daemon=True).start()


def pick_device(name: str) -> str:
    """`auto` -> cuda when a GPU is visible, else cpu."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but torch sees no CUDA device")
    return name


class Progress:
    """Progress lines for log files (a tqdm bar is unreadable once redirected to a file)."""

    def __init__(self, logger: logging.Logger, what: str, total: int, unit: str, every_s: float = 10.0):
        self.logger, self.what, self.total, self.unit, self.every_s = logger, what, total, unit, every_s
        self.start = self.last = time.perf_counter()
        self.done = 0

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            elapsed = now - self.start
            rate = self.done / elapsed if elapsed > 0 else 0.0
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            self.logger.info(
                "%s: %d/%d %s (%.0f%%), %.1f %s/s, elapsed %.0fs, eta %.0fs",
                self.what, self.done, self.total, self.unit,
                100.0 * self.done / max(self.total, 1), rate, self.unit, elapsed, eta,
            )

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
