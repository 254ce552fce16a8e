"""The workflow on a real single-node SLURM cluster (tests/slurm_cluster.py: slurmctld, slurmd
and munged started by the test) through `--workflow-profile profiles/slurm` and
snakemake-executor-plugin-slurm: every job an sbatch job that SLURM ran to COMPLETED, each job's
memory, time limit, CPUs, partition, account and GPU on its SLURM request, the same outputs as a
local run, and a job that SLURM kills on its first attempt reported and retried as the profile
says (`retries: 1`). Skipped, with the reason, where the cluster cannot run (no SLURM: `make
slurm` installs it as root)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from circuitflow.io import drop_timings

from ..conftest import ROOT, copy_workflow, tiny_config, write_config
from ..slurm_cluster import SlurmCluster, slurm_cluster, unavailable_reason
from .test_workflow import SNAKEMAKE, job_counts, snakemake

UNAVAILABLE = unavailable_reason()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")]

# Every stage up to the transcoders and their fidelity, and one attribution graph: GPU rules
# (gpu=1) and CPU rules, with wildcards. About 3.5 min under SLURM here (each job
# costs its two Snakemake starts and the wait for a status check), with the local run alongside.
TARGETS = ("transcoders", "results/tiny/attribution/france-capital.json")
# This job's first attempt asks for too little memory: SLURM kills it, Snakemake retries it.
FAIL_ONCE = ("train_transcoders", "group", "0-1")
KILL_MB = 50  # far below a Python process with Snakemake loaded (about 75 MB when it was killed)
FAILED_STATES = ("FAILED", "OUT_OF_MEMORY", "CANCELLED")
# Outputs that hold wall-clock figures (compared without circuitflow.io.TIMING_KEYS) or the
# checkout's absolute path.
TIMED_JSON = ("activations/manifest.json", "transcoders/fidelity.json", ".metrics.json", ".scores.json")
WITH_PATHS = ("transcoders/config.yaml",)


@pytest.fixture
def cluster():
    with slurm_cluster() as running:
        yield running


def cluster_profile(cluster: SlurmCluster) -> tuple[dict, int]:
    """profiles/slurm as shipped, with what one small node cannot give scaled down: threads
    capped at half its CPUs (the two layers train in one job), every mem_mb divided by one factor so that the largest fits in half the
    node. Partitions, account, GPU requests, runtimes, retries and the rest stay as shipped.
    FAIL_ONCE's job asks for KILL_MB on its first attempt (profile resources are expressions that
    see `attempt` and `wildcards`). Returns the profile and FAIL_ONCE's memory on a retry."""
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    mems = [profile["default-resources"]["mem_mb"]]
    mems += [res["mem_mb"] for res in profile["set-resources"].values() if "mem_mb" in res]
    factor = math.ceil(max(mems) / (cluster.real_memory // 2))
    profile["default-resources"]["mem_mb"] //= factor
    for res in profile["set-resources"].values():
        if "mem_mb" in res:
            res["mem_mb"] //= factor
    profile["set-threads"] = {rule: min(n, max(1, cluster.cpus // 2)) for rule, n in profile["set-threads"].items()}
    rule, wildcard, value = FAIL_ONCE
    retry_mb = profile["set-resources"][rule]["mem_mb"]
    profile["set-resources"][rule]["mem_mb"] = (
        f"{KILL_MB} if attempt == 1 and wildcards.{wildcard} == '{value}' else {retry_mb}")
    return profile, retry_mb


def planned_jobs(output: str) -> dict[str, dict]:
    """The jobs Snakemake's log announces (local rules aside), the last attempt's:
    {jobid: {rule, wildcards, resources, threads}}."""
    jobs = {}
    for block in re.split(r"\n(?=\[[A-Z][a-z]{2} [A-Z][a-z]{2} )", output):
        rule = re.search(r"^rule (\w+):$", block, re.MULTILINE)
        jobid = re.search(r"^\s+jobid: (\d+)$", block, re.MULTILINE)
        if not (rule and jobid):
            continue
        resources = re.search(r"^\s+resources: (.*)$", block, re.MULTILINE)
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.MULTILINE)
        threads = re.search(r"^\s+threads: (\d+)$", block, re.MULTILINE)  # printed when > 1
        jobs[jobid.group(1)] = {
            "rule": rule.group(1),
            "wildcards": dict(item.split("=", 1) for item in wildcards.group(1).split(", ")) if wildcards else {},
            "resources": dict(item.split("=", 1) for item in resources.group(1).split(", ")),
            "threads": int(threads.group(1)) if threads else 1,
        }
    return jobs


def slurm_ids(output: str) -> dict[str, list[str]]:
    """{Snakemake jobid: [SLURM job ids, one per attempt]} from the plugin's submission lines."""
    ids: dict[str, list[str]] = {}
    for jobid, slurm_id in re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", output):
        ids.setdefault(jobid, []).append(slurm_id)
    return ids


def minutes(limit: str) -> int:
    """scontrol's TimeLimit ([D-]HH:MM:SS) in minutes."""
    days, _, clock = limit.rpartition("-")
    hours, mins, secs = (int(part) for part in clock.split(":"))
    return (int(days or 0) * 24 + hours) * 60 + mins + (secs > 0)


def output_files(checkout: Path) -> dict[str, Path]:
    """The run's outputs (results/ and the materialized model), logs and benchmarks aside."""
    found = {}
    for folder in ("results", "resources/models"):
        for path in sorted((checkout / folder).rglob("*")):
            rel = str(path.relative_to(checkout))
            if path.is_file() and "/logs/" not in rel and "/benchmarks/" not in rel:
                found[rel] = path
    return found


def check_same_outputs(local: Path, remote: Path) -> int:
    """Every output of the SLURM run is the local run's: byte for byte (dataset and activation
    parquet, model and transcoder safetensors, architectures, the graph, fidelity.csv), JSON with
    timings equal without them, the set config equal but for the checkout's path. Returns the
    number of byte-identical files."""
    ours, theirs = output_files(local), output_files(remote)
    assert sorted(ours) == sorted(theirs)
    identical = 0
    for rel, path in ours.items():
        other = theirs[rel]
        if rel.endswith(TIMED_JSON):
            assert drop_timings(json.loads(path.read_text())) == drop_timings(json.loads(other.read_text())), rel
        elif rel.endswith(WITH_PATHS):
            assert path.read_text().replace(str(local), "<checkout>") == \
                other.read_text().replace(str(remote), "<checkout>"), rel
        else:
            assert path.read_bytes() == other.read_bytes(), f"{rel} differs between the local and the SLURM run"
            identical += 1
    return identical


def test_workflow_on_slurm(tmp_path, tiny_llama_source, tiny_corpus, cluster):
    config = tiny_config(tmp_path, tiny_llama_source, tiny_corpus)
    profile, retry_mb = cluster_profile(cluster)
    local, remote = tmp_path / "local", tmp_path / "slurm"
    for checkout in (local, remote):
        checkout.mkdir()
        copy_workflow(checkout)
        write_config(checkout / "tiny.yaml", config)
    (remote / "profiles/slurm/config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    # The same jobs locally, side by side (the SLURM run mostly waits for its status checks), with
    # the threads the SLURM jobs get: torch's results depend on them.
    threads = [f"{rule}={n}" for rule, n in profile["set-threads"].items()]
    with open(tmp_path / "local.log", "w") as local_log:
        local_run = subprocess.Popen(
            [*SNAKEMAKE, "--cores", str(cluster.cpus), *TARGETS, "--set-threads", *threads, "--configfile", "tiny.yaml"],
            cwd=local, env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
            stdout=local_log, stderr=subprocess.STDOUT)
    try:
        started = time.monotonic()
        # Job status from squeue (without slurmdbd, sacct reads only the completion log), first
        # checked 6 s after a submission rather than 40 s (then every 16, 26, ... s until one ends).
        run = snakemake(remote, "--workflow-profile", "profiles/slurm", *TARGETS, "--configfile", "tiny.yaml",
                        "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "6",
                        env=cluster.env_for({}), timeout=900)
        print(f"SLURM run: {time.monotonic() - started:.0f} s")
        assert local_run.wait(timeout=600) == 0, (tmp_path / "local.log").read_text()[-8000:]
        reference = (tmp_path / "local.log").read_text()

        counts = job_counts(run.stdout)
        assert counts == job_counts(reference)
        assert counts["train_transcoders"] == 1 and counts["attribute_prompt"] == 1

        # Every job but the local rule `transcoders` went through sbatch, each attempt a SLURM
        # job of its own, and SLURM's accounting lists exactly those, all of this run.
        jobs = planned_jobs(run.stdout)
        submitted = slurm_ids(run.stdout)
        assert set(submitted) == set(jobs) and len(jobs) == counts["total"] - 1, (submitted, jobs)
        accounting = {row["JobID"]: row for row in cluster.sacct(
            "JobID", "JobName", "Partition", "State", "Timelimit", "AllocCPUS")}
        assert sorted(accounting, key=int) == sorted((i for ids in submitted.values() for i in ids), key=int)
        assert len({row["JobName"] for row in accounting.values()}) == 1  # the plugin names jobs by run

        rule, wildcard, value = FAIL_ONCE
        gpu_rules = set()
        for jobid, job in jobs.items():
            fails_once = job["rule"] == rule and job["wildcards"].get(wildcard) == value
            attempts = submitted[jobid]
            assert len(attempts) == (2 if fails_once else 1), (job, attempts)
            for attempt, slurm_id in enumerate(attempts, start=1):
                row, shown = accounting[slurm_id], cluster.show_job(slurm_id)
                killed = fails_once and attempt == 1
                assert row["State"] in FAILED_STATES if killed else row["State"] == "COMPLETED", row
                assert shown["Comment"].startswith(f"rule_{job['rule']}"), shown
                # What Snakemake planned for the job is what SLURM was asked for.
                res = job["resources"]
                assert shown["MinMemoryNode"] == f"{KILL_MB if killed else res['mem_mb']}M", (job, shown)
                assert minutes(shown["TimeLimit"]) == int(row["Timelimit"]) == int(res["runtime"]), (job, shown)
                assert int(shown["NumCPUs"]) == int(row["AllocCPUS"]) == job["threads"], (job, shown)
                assert shown["Partition"] == row["Partition"] == res["slurm_partition"], (job, shown)
                assert shown["Account"] == res["slurm_account"] == profile["default-resources"]["slurm_account"]
                gpu = res.get("gpu") == "1"
                assert shown.get("TresPerJob") == ("gres:gpu:1" if gpu else None), (job, shown)
                # A GPU request in the CPU partition would be refused on a real cluster.
                assert res["slurm_partition"] == ("gpu" if gpu else "cpu"), job
                if gpu:
                    gpu_rules.add(job["rule"])
        assert gpu_rules == {"cache_activations", "train_transcoders", "evaluate_transcoders", "attribute_prompt"}

        # Those were the profile's values (scaled to this node), not the rules' own.
        by_rule = {job["rule"]: job for job in jobs.values()}
        for name, res in profile["set-resources"].items():
            if name in by_rule:
                planned = by_rule[name]["resources"]
                expected = {**res, "mem_mb": retry_mb} if name == rule else res
                assert {key: planned[key] for key in expected} == {k: str(v) for k, v in expected.items()}, name
        for name, n in profile["set-threads"].items():
            assert by_rule[name]["threads"] == n, name

        # The killed attempt was reported with SLURM's state, its SLURM log (kept) says why, and
        # the job ran again with its retry's memory.
        failed_id = next(ids[0] for ids in submitted.values() if len(ids) == 2)
        assert re.search(rf"SLURM-job '{failed_id}' failed, SLURM status is: '({'|'.join(FAILED_STATES)})'",
                         run.stdout)
        assert re.search(r"Trying to restart job \d+\.", run.stdout)
        slurm_log = Path(re.search(rf"SLURM jobid {failed_id} \(log: (\S+)\)", run.stdout).group(1))
        assert "exceeded memory limit" in slurm_log.read_text()

        assert check_same_outputs(local, remote) >= 13
    except BaseException:
        print(cluster.log_tails())
        raise
    finally:
        if local_run.poll() is None:
            local_run.kill()
            local_run.wait()


def test_judge_jobs_on_slurm_keep_their_own_response_caches(tmp_path, tiny_llama_source, tiny_corpus, cluster):
    """The LLM rules as SLURM jobs (classify and explain side by side, the local judge on the
    node): each job keeps its own SQLite cache in the run's folder, in exclusive mode (no -shm
    index, the part of WAL that network file systems break), and a rerun sends nothing."""
    copy_workflow(tmp_path)
    write_config(tmp_path / "tiny.yaml", tiny_config(tmp_path, tiny_llama_source, tiny_corpus))
    profile, _ = cluster_profile(cluster)
    (tmp_path / "profiles/slurm/config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    targets = [f"results/tiny/interp/neurons/{name}" for name in ("feature_classifications.json", "autointerp.json")]
    args = ("--workflow-profile", "profiles/slurm", *targets, "--configfile", "tiny.yaml",
            "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "6")
    try:
        run = snakemake(tmp_path, *args, env=cluster.env_for({}), timeout=900)
        counts = job_counts(run.stdout)
        assert counts["classify_features"] == counts["explain_features"] == 1
        submitted = {row["JobID"]: row for row in cluster.sacct("JobID", "JobName", "State")}
        assert submitted and all(row["State"] == "COMPLETED" for row in submitted.values()), submitted
        caches = tmp_path / "results/tiny/interp/llm-cache"
        assert sorted(p.name for p in caches.iterdir()) == ["classify-neurons.sqlite", "explain-neurons.sqlite",
                                                             "local-judge.lock"]
        assert not (tmp_path / "results/tiny/interp/llm-cache.sqlite").exists()
        def usage(stage):
            return json.loads((tmp_path / f"results/tiny/interp/neurons/{stage}.usage.json").read_text())

        first = {stage: usage(stage) for stage in ("classify", "explain")}
        assert all(u["requests"] > 0 and u["failed_requests"] == 0 for u in first.values()), first
        rerun = snakemake(tmp_path, *args, "--forcerun", *targets, env=cluster.env_for({}), timeout=900)
        assert job_counts(rerun.stdout)["classify_features"] == 1
        # answered from each job's own cache (a JSON reply cut off at its max_tokens is never
        # cached, so the local judge's explanations may ask a little again)
        again = {stage: usage(stage) for stage in ("classify", "explain")}
        assert again["classify"]["requests"] == 0 and again["classify"]["cache_hits"] > 0, again
        assert again["explain"]["cache_hits"] > 0 and again["explain"]["requests"] <= first["explain"]["requests"]
    except BaseException:
        print(cluster.log_tails())
        raise
