"""upload_to_hub against the stand-in hub (tests/hub_server.py): clear errors for a missing,
invalid or read-only token and for a failing hub, a branch made on demand, removed files
deleted, and no receipt when nothing was committed because of an error. Someone else's repo
(a mistyped hub.repo_id) is left untouched, a public repo is not published as private, and
only files circuitflow published there are ever deleted."""

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
           offline: bool = False, private: bool = False, allow_existing: bool = False) -> subprocess.CompletedProcess:
    """upload_to_hub in a fresh process: huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE
    once, at import, so each case gets its own environment."""
    script = textwrap.dedent(f"""
        from circuitflow.config import UploadToHubSettings
        from circuitflow.hub import HubError, upload_to_hub
        try:
            upload_to_hub(repo_dir={str(folder)!r}, out_receipt={str(tmp / "receipt.json")!r},
                          settings=UploadToHubSettings(commit_message="test", repo_id={REPO!r}, revision={revision!r},
                                                       private={private!r}, allow_existing_repo={allow_existing!r}))
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
        ".gitattributes", "README.md", "circuitflow.json", "layer_0.bin", "layer_0.safetensors"]
    assert (hub.tree(REPO, "main") / "features" / "index.json.gz").is_file()  # main is untouched
    assert "POST /api/models/circuitflow-test/upload/branch/v2" in hub.requests


def tree_files(hub: StandInHub, branch: str = "main") -> dict[str, bytes]:
    root = hub.tree(REPO, branch)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def last_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_someone_elses_repo_is_left_untouched(hub, tmp_path, staged):
    hub.create(REPO, {"README.md": b"their card", "model.safetensors": b"their weights"})
    theirs = tree_files(hub)
    for revision in ("main", "v2"):  # a new branch would start from their files: refused before it is made
        assert last_line(upload(hub, tmp_path, staged, revision=revision)) == (
            f"HubError: {REPO}@main already holds files that circuitflow did not publish (README.md, "
            "model.safetensors) and no circuitflow.json: nothing was uploaded; check hub.repo_id, or set "
            "hub.allow_existing_repo: true to publish into it (files circuitflow did not publish are never deleted)")
    assert tree_files(hub) == theirs and len(hub.commits(REPO)) == 2 and set(hub.repos[REPO].branches) == {"main"}
    assert not (tmp_path / "receipt.json").exists()
    assert not [r for r in hub.requests if "/commit/" in r or "/preupload/" in r or "/branch/" in r]

    # Asked explicitly: the staged files are published beside theirs, and nothing of theirs is deleted.
    result = upload(hub, tmp_path, staged, allow_existing=True)
    assert result.returncode == 0, result.stderr
    receipt = json.loads((tmp_path / "receipt.json").read_text())
    assert receipt["deleted"] == [] and receipt["kept"] == ["model.safetensors"]
    assert receipt["updated"] == ["README.md"] and tree_files(hub)["model.safetensors"] == b"their weights"
    marker = json.loads(tree_files(hub)["circuitflow.json"])
    assert marker == {"generator": "circuitflow",
                      "files": ["README.md", "features/index.json.gz", "layer_0.safetensors"]}


def test_a_public_repo_is_not_published_as_private(hub, tmp_path, staged):
    assert upload(hub, tmp_path, staged).returncode == 0 and not hub.repos[REPO].private
    (staged / "README.md").write_text(CARD + "\nchanged\n")
    assert last_line(upload(hub, tmp_path, staged, private=True)) == (
        f"HubError: {REPO} is public but hub.private is true: nothing was uploaded; make the repo private on the hub "
        "(its Settings page) or set hub.private: false to publish it publicly")
    assert len(hub.commits(REPO)) == 2 and not hub.repos[REPO].private
    # A private repo stays private when hub.private is false: published, with a warning.
    hub.repos[REPO].private = True
    result = upload(hub, tmp_path, staged)
    assert result.returncode == 0 and f"{REPO} is private (hub.private is false): it stays private" in result.stderr
    assert hub.repos[REPO].private and len(hub.commits(REPO)) == 3


def test_a_new_private_repo_is_created_private(hub, tmp_path, staged):
    assert upload(hub, tmp_path, staged, private=True).returncode == 0 and hub.repos[REPO].private


def test_a_second_upload_replaces_and_deletes_only_its_own_files(hub, tmp_path, staged):
    assert upload(hub, tmp_path, staged).returncode == 0
    hub.push(REPO, {"notes.md": b"the owner's notes", "features/extra.txt": b"the owner's file"})
    (staged / "features" / "index.json.gz").unlink()
    (staged / "features" / "layer_0.bin").write_bytes(b"bin")
    (staged / "layer_0.safetensors").write_bytes(os.urandom(4096))
    result = upload(hub, tmp_path, staged)
    assert result.returncode == 0, result.stderr
    receipt = json.loads((tmp_path / "receipt.json").read_text())
    assert receipt["deleted"] == ["features/index.json.gz"] and receipt["kept"] == ["features/extra.txt", "notes.md"]
    assert receipt["added"] == ["features/layer_0.bin"]
    assert receipt["updated"] == ["layer_0.safetensors", "circuitflow.json"]
    published = tree_files(hub)
    assert published["notes.md"] == b"the owner's notes" and "features/index.json.gz" not in published
    assert published["layer_0.safetensors"] == (staged / "layer_0.safetensors").read_bytes()
    # unchanged: no commit (the marker is the same bytes)
    commits = len(hub.commits(REPO))
    assert upload(hub, tmp_path, staged).returncode == 0 and len(hub.commits(REPO)) == commits
