"""upload_to_hub against the stand-in hub (tests/hub_server.py): clear errors for a missing,
invalid or read-only token and for a failing hub, a branch made on demand, removed files
deleted, and no receipt when nothing was committed because of an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ..hub_server import READ_TOKEN, WRITE_TOKEN, StandInHub

REPO = "circuitflow-test/upload"
CARD = "---\nlibrary_name: circuit-tracer\n---\n\n# test\n"


def upload(hub: StandInHub, tmp: Path, folder: Path, token: str | None = WRITE_TOKEN, revision: str = "main",
           offline: bool = False) -> subprocess.CompletedProcess:
    """upload_to_hub in a fresh process: huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE
    once, at import, so each case gets its own environment."""
    script = textwrap.dedent(f"""
        from circuitflow.config import UploadToHubSettings
        from circuitflow.hub import HubError, upload_to_hub
        try:
            upload_to_hub(repo_dir={str(folder)!r}, out_receipt={str(tmp / "receipt.json")!r},
                          settings=UploadToHubSettings(commit_message="test", repo_id={REPO!r}, revision={revision!r}))
        except HubError as error:
            raise SystemExit(f"HubError: {{error}}")
    """)
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp / "hf-home"),
           "HF_HUB_OFFLINE": "1" if offline else "0", "HF_TOKEN": token or ""}
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def staged(tmp_path) -> Path:
    folder = tmp_path / "repo"
    (folder / "features").mkdir(parents=True)
    (folder / "README.md").write_text(CARD)
    (folder / "layer_0.safetensors").write_bytes(os.urandom(4096))
    (folder / "features" / "index.json.gz").write_bytes(b"index")
    return folder


@pytest.fixture
def hub(tmp_path):
    with StandInHub(tmp_path / "hub") as server:
        yield server


@pytest.mark.parametrize("token,message", [
    (None, "HubError: publishing needs a Hugging Face token with write access: set HF_TOKEN"),
    ("hf_not_a_token", "refused the token while creating circuitflow-test/upload (401 Unauthorized): HF_TOKEN is "
                       "invalid or expired"),
    (READ_TOKEN, "HubError: the token may not write to circuitflow-test/upload (403 Forbidden while creating)"),
])
def test_token_problems_are_one_clear_line(hub, tmp_path, staged, token, message):
    result = upload(hub, tmp_path, staged, token=token)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("HubError: ") and message in last, result.stderr
    assert "Traceback" not in result.stderr and (token is None or token not in result.stderr)
    assert not (tmp_path / "receipt.json").exists()
    assert REPO not in hub.repos or len(hub.commits(REPO)) == 1


def test_offline_mode_is_named(hub, tmp_path, staged):
    result = upload(hub, tmp_path, staged, offline=True)
    assert result.returncode != 0 and "HF_HUB_OFFLINE is set" in result.stderr and hub.requests == []


def test_a_failing_hub_commits_nothing_and_writes_no_receipt(hub, tmp_path, staged):
    hub.fail("POST /api/models/circuitflow-test/upload/commit/", 500)
    result = upload(hub, tmp_path, staged)
    assert result.returncode != 0
    assert "failed while committing to circuitflow-test/upload (500); nothing was committed" in result.stderr
    assert not (tmp_path / "receipt.json").exists() and len(hub.commits(REPO)) == 1
    # the next run (Snakemake's retry, or the user's) publishes
    assert upload(hub, tmp_path, staged).returncode == 0 and len(hub.commits(REPO)) == 2


def test_branch_is_created_and_removed_files_are_deleted(hub, tmp_path, staged):
    assert upload(hub, tmp_path, staged).returncode == 0
    (staged / "features" / "index.json.gz").unlink()
    (staged / "features" / "layer_0.bin").write_bytes(b"bin")
    result = upload(hub, tmp_path, staged, revision="v2")
    assert result.returncode == 0, result.stderr
    receipt = json.loads((tmp_path / "receipt.json").read_text())
    assert receipt["revision"] == "v2" and receipt["committed"]
    assert receipt["added"] == ["features/layer_0.bin"] and receipt["deleted"] == ["features/index.json.gz"]
    assert receipt["commit_id"] == hub.commits(REPO, "v2")[-1].oid
    assert sorted(p.name for p in hub.tree(REPO, "v2").rglob("*") if p.is_file()) == [
        ".gitattributes", "README.md", "layer_0.bin", "layer_0.safetensors"]
    assert (hub.tree(REPO, "main") / "features" / "index.json.gz").is_file()  # main is untouched
    assert "POST /api/models/circuitflow-test/upload/branch/v2" in hub.requests
