"""upload_to_hub: make a staged folder the content of a Hugging Face repo, in at most one commit.

Order of work: the token (from HF_TOKEN or the hub's stored login; refused before anything else
when absent), `create_repo(exist_ok=True)`, the branch (created from main when the revision
is another branch that does not exist yet), then the remote file list with hashes
(`repo_info(files_metadata=True)`). Each local file is compared with it by content hash (the
git blob sha1 for regular files, the sha256 for LFS files), and only added, changed and removed
files go into one `create_commit`, with the head that was compared as `parent_commit` (a
concurrent push fails the commit instead of being overwritten). Nothing changed: no commit.

A repo is somebody's: the upload writes `circuitflow.json` (MARKER) beside the staged files,
listing them. It refuses a repo that holds files but no marker (a mistyped hub.repo_id) unless
hub.allow_existing_repo is true, refuses a public repo when hub.private is true (it never
changes a repo's visibility), and deletes only files the marker listed: files others added
stay.

The endpoint is huggingface_hub's (HF_ENDPOINT, else https://huggingface.co). The token is
never logged, passed on or written: the receipt holds the repo, revision, commit and hashes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from circuitflow.config import UploadToHubSettings
from circuitflow.io import write_json

log = logging.getLogger("circuitflow.hub")

TOKEN_VARIABLE = "HF_TOKEN"
KEEP_REMOTE = (".gitattributes",)  # the Hub's own file of every new repo
MARKER = "circuitflow.json"  # what this workflow published in the repo: the only files it may delete
MARKER_MAX_BYTES = 1 << 20
SNAKEMAKE_MARKER = ".snakemake_timestamp"  # Snakemake marks the staged directory output with it


class HubError(RuntimeError):
    """The upload cannot go ahead or the hub refused it; one line naming the cause and the fix."""


@dataclass(frozen=True)
class LocalFile:
    path: str  # inside the repo, with '/'
    source: Path | bytes
    size: int
    sha256: str
    git_sha1: str  # what the Hub reports as a regular file's blob id


def hub_token() -> str | None:
    """HF_TOKEN, else the token `hf auth login` stored (huggingface_hub's own lookup)."""
    from huggingface_hub import get_token

    return get_token()


def require_token() -> None:
    """Fail with one line naming the variable unless a token is available and the hub may be
    reached (checked when the DAG is built, before any job, and again by the job)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise HubError("publishing needs the network, but HF_HUB_OFFLINE is set: unset it for this run "
                       "(HF_HUB_OFFLINE=0 snakemake ... hub)")
    if not hub_token():
        raise HubError(f"publishing needs a Hugging Face token with write access: set {TOKEN_VARIABLE} "
                       "(create one at https://huggingface.co/settings/tokens) or run `hf auth login`")


def hash_file(path: Path) -> LocalFile:
    sha256, size = hashlib.sha256(), path.stat().st_size
    git = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            sha256.update(block)
            git.update(block)
    return LocalFile("", path, size, sha256.hexdigest(), git.hexdigest())


def local_files(folder: Path) -> dict[str, LocalFile]:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SNAKEMAKE_MARKER):
        record = hash_file(path)
        name = path.relative_to(folder).as_posix()
        if name == MARKER:
            raise HubError(f"the staged repo {folder} holds {name}, which the upload writes itself; "
                           "rerun stage_hub_repo")
        files[name] = LocalFile(name, path, record.size, record.sha256, record.git_sha1)
    return files


def marker_file(published: list[str]) -> LocalFile:
    """The marker listing `published` (no timestamp: an unchanged run commits nothing)."""
    data = (json.dumps({"generator": "circuitflow", "files": sorted(published)}, indent=1) + "\n").encode()
    git = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
    return LocalFile(MARKER, data, len(data), hashlib.sha256(data).hexdigest(), git)


def published_before(api, repo_id: str, info) -> set[str] | None:
    """The files the marker at the compared head lists, or None when it has none (or one that
    is not circuitflow's)."""
    sibling = next((s for s in info.siblings or [] if s.rfilename == MARKER), None)
    if sibling is None:
        return None
    record = None
    if (sibling.size or 0) <= MARKER_MAX_BYTES:
        with tempfile.TemporaryDirectory() as cache:
            path = api.hf_hub_download(repo_id, MARKER, revision=info.sha, cache_dir=cache)
            try:
                record = json.loads(Path(path).read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                pass
    files = record.get("files") if isinstance(record, dict) and record.get("generator") == "circuitflow" else None
    if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
        log.warning("%s: %s is not circuitflow's list of published files; treating the repo as not ours",
                    repo_id, MARKER)
        return None
    return set(files)


def check_visibility(repo_id: str, info, private: bool) -> None:
    """Never publish privately meant files into a public repo, nor change a repo's visibility."""
    if private and info.private is not True:
        raise HubError(f"{repo_id} is public but hub.private is true: nothing was uploaded; make the repo private "
                       "on the hub (its Settings page) or set hub.private: false to publish it publicly")
    if not private and info.private:
        log.warning("%s is private (hub.private is false): it stays private, and circuit-tracer's online "
                    "frontend cannot read its features", repo_id)


def check_ownership(repo_id: str, revision: str, info, before: set[str] | None, allow_existing: bool) -> None:
    """Refuse a repo that holds files circuitflow did not publish there (no marker) unless allowed."""
    foreign = sorted(s.rfilename for s in info.siblings or [] if s.rfilename not in (*KEEP_REMOTE, MARKER))
    if before is None and foreign and not allow_existing:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise HubError(f"{repo_id}@{revision} already holds files that circuitflow did not publish ({shown}) and no "
                       f"{MARKER}: nothing was uploaded; check hub.repo_id, or set hub.allow_existing_repo: true "
                       "to publish into it (files circuitflow did not publish are never deleted)")


def may_publish(api, repo_id: str, revision: str, info, settings: UploadToHubSettings) -> set[str] | None:
    """Check that the repo as `info` shows it may take this upload; return the files circuitflow
    published there before (None: none, as far as the repo says)."""
    check_visibility(repo_id, info, settings.private)
    before = published_before(api, repo_id, info)
    check_ownership(repo_id, revision, info, before, settings.allow_existing_repo)
    return before


def unchanged(local: LocalFile, remote) -> bool:
    """`remote` is a RepoSibling with files metadata: LFS files carry a sha256, others a blob id."""
    if remote.lfs is not None:
        return remote.lfs.sha256 == local.sha256
    return remote.blob_id == local.git_sha1


def _content(file: LocalFile) -> str | bytes:
    return file.source if isinstance(file.source, bytes) else str(file.source)


def _explain(error: Exception, repo_id: str, step: str, endpoint: str) -> HubError:
    """One line for an HTTP failure (the token never appears: messages name the URL only)."""
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if status == 401:
        return HubError(f"the hub at {endpoint} refused the token while {step} {repo_id} (401 Unauthorized): "
                        f"{TOKEN_VARIABLE} is invalid or expired; create a new write token at "
                        "https://huggingface.co/settings/tokens")
    if status == 403:
        return HubError(f"the token may not write to {repo_id} (403 Forbidden while {step}): use a token with "
                        "write access to that namespace, or set hub.repo_id to a repo you own")
    if status is not None and status >= 500:
        return HubError(f"the hub at {endpoint} failed while {step} {repo_id} ({status}); nothing was committed, "
                        "retry later")
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    return HubError(f"uploading to {repo_id} failed while {step}: {detail}")


def upload_to_hub(*, repo_dir: str | Path, out_receipt: str | Path, settings: UploadToHubSettings) -> dict:
    """Commit the differences between `repo_dir` and the repo's `settings.revision`; write the receipt."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError

    require_token()
    token = hub_token()
    if settings.repo_id is None:
        raise HubError("upload_to_hub needs hub.repo_id")
    repo_id, revision, endpoint = settings.repo_id, settings.revision, constants.ENDPOINT
    api = HfApi(endpoint=endpoint, token=token)
    started = time.perf_counter()
    files = local_files(Path(repo_dir))
    step = "creating"
    try:
        api.create_repo(repo_id, private=settings.private, exist_ok=True)
        step = "reading"
        try:
            info = api.repo_info(repo_id, revision=revision, files_metadata=True)
        except RevisionNotFoundError:
            if revision == "main":
                raise
            # the branch starts from main's files: check main before writing anything to the repo
            may_publish(api, repo_id, "main", api.repo_info(repo_id, revision="main", files_metadata=True), settings)
            step = f"creating branch {revision} of"
            api.create_branch(repo_id, branch=revision, exist_ok=True)
            info = api.repo_info(repo_id, revision=revision, files_metadata=True)
        before = may_publish(api, repo_id, revision, info, settings)
        remote = {sibling.rfilename: sibling for sibling in info.siblings or []}
        marker = marker_file(list(files))
        outgoing = {**files, MARKER: marker}
        added = [name for name in outgoing if name not in remote]
        updated = [name for name in outgoing if name in remote and not unchanged(outgoing[name], remote[name])]
        deleted = sorted(name for name in (before or ()) if name in remote and name not in outgoing
                         and name not in KEEP_REMOTE)
        kept = sorted(name for name in remote if name not in outgoing and name not in deleted
                      and name not in KEEP_REMOTE)
        if kept:
            log.info("%s@%s: leaving %d file(s) circuitflow did not publish: %s", repo_id, revision, len(kept),
                     ", ".join(kept[:10]) + (" ..." if len(kept) > 10 else ""))
        commit_id, commit_url = info.sha, None
        if added or updated or deleted:
            step = "committing to"
            operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=_content(outgoing[name]))
                          for name in [*added, *updated]]
            operations += [CommitOperationDelete(path_in_repo=name) for name in deleted]
            log.info("%s@%s: committing %d added, %d changed, %d removed file(s) of %d", repo_id, revision,
                     len(added), len(updated), len(deleted), len(outgoing))
            commit = api.create_commit(repo_id, operations, commit_message=settings.commit_message,
                                       revision=revision, parent_commit=info.sha)
            commit_id, commit_url = commit.oid, commit.commit_url
        else:
            log.info("%s@%s already holds these %d files (head %s): no commit", repo_id, revision, len(outgoing),
                     info.sha)
    except HfHubHTTPError as error:
        raise _explain(error, repo_id, step, endpoint) from None
    except ValueError as error:  # huggingface_hub's check of the model card's metadata
        raise HubError(f"the hub refused the upload to {repo_id} while {step}: "
                       f"{' '.join(str(error).split())}") from None
    except OSError as error:  # connection refused, DNS, TLS: requests' errors are OSErrors
        raise HubError(f"cannot reach the hub at {endpoint} while {step} {repo_id}: {error}; check the network "
                       "or HF_ENDPOINT") from None
    receipt = {
        "repo_id": repo_id, "repo_type": "model", "revision": revision, "endpoint": endpoint,
        "url": f"{endpoint}/{repo_id}" + ("" if revision == "main" else f"/tree/{revision}"),
        "commit_id": commit_id, "commit_url": commit_url, "committed": commit_url is not None,
        "added": added, "updated": updated, "deleted": deleted, "kept": kept,
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files.values()],
        "marker": {"path": MARKER, "size": marker.size, "sha256": marker.sha256},
    }
    write_json(out_receipt, receipt)
    log.info("%s@%s is at commit %s (%d files, %.1f MB) in %.1fs", repo_id, revision, commit_id, len(files),
             sum(f.size for f in files.values()) / 1e6, time.perf_counter() - started)
    return receipt
