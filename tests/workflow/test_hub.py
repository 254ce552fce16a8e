"""Publishing the tiny run to a stand-in Hugging Face Hub on loopback (tests/hub_server.py): the
exact repo contents, circuit-tracer loading the set back from it, a second run that commits
nothing, a one-file change that commits one file, and the refusals before any job runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ..conftest import copy_workflow, tiny_config, write_config
from ..hub_server import WRITE_TOKEN, StandInHub, hub_env, load_from_hub
from .imported_runs import run_imported
from .test_workflow import job_counts, snakemake

REPO = "circuitflow-test/tiny-transcoders"
BASE_MODEL = "circuitflow-test/tiny-lm"


def staged_files(folder: Path) -> dict[str, bytes]:
    """Every file of a repo folder (without the mark Snakemake leaves in a directory output)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".snakemake_timestamp"}


@pytest.mark.slow
def test_publish_tiny_run_to_stand_in_hub(tmp_path, tiny_llama_source, tiny_corpus):
    copy_workflow(tmp_path)
    config = tiny_config(tmp_path, tiny_llama_source, tiny_corpus,
                         hub={"repo_id": REPO, "base_model": BASE_MODEL, "license": "apache-2.0"})
    write_config(tmp_path / "tiny.yaml", config)
    home = tmp_path / "hf-home"
    with StandInHub(tmp_path / "hub") as hub:
        # No token: one line naming HF_TOKEN, before any job.
        refused = snakemake(tmp_path, "--cores", "2", "hub", "--configfile", "tiny.yaml", check=False,
                            env=hub_env(hub, home, token=None))
        assert refused.returncode != 0 and "set HF_TOKEN" in refused.stdout, refused.stdout[-3000:]
        assert not (tmp_path / "results").exists() and hub.requests == []

        run = snakemake(tmp_path, "--cores", "2", "hub", "--configfile", "tiny.yaml", env=hub_env(hub, home),
                        timeout=1500)  # the whole tiny DAG, judge included
        counts = job_counts(run.stdout)
        assert counts["stage_hub_repo"] == counts["upload_to_hub"] == counts["assemble_hub_graphs"] == 1

        results = tmp_path / "results/tiny"
        staged = staged_files(results / "hub/repo")
        published = staged_files(hub.tree(REPO))
        # the exact bytes, plus the hub's .gitattributes and the upload's marker of what it published
        assert published == {**staged, ".gitattributes": published[".gitattributes"],
                             "circuitflow.json": published["circuitflow.json"]}
        assert set(staged) == {
            "README.md", "config.yaml", "feature_metadata.json", "dataset/summary.json",
            "layer_0.safetensors", "layer_1.safetensors", "layer_0.architecture.json", "layer_1.architecture.json",
            "features/index.json.gz", "features/layer_0.bin", "features/layer_1.bin",
            "metrics/fidelity.json", "metrics/fidelity.csv",
            "metrics/training/layer_0.metrics.json", "metrics/training/layer_1.metrics.json",
            "interp/feature_classifications.json", "interp/autointerp.json", "interp/scores.json",
            "graphs/france-capital.json", "graphs/genesis.json", "graphs/graph-metadata.json",
            "graphs/graph-scores.json"}
        assert staged["layer_0.safetensors"] == (results / "transcoders/layer_0.safetensors").read_bytes()
        for name in ("index.json.gz", "layer_0.bin", "layer_1.bin"):
            assert staged[f"features/{name}"] == (results / "features/packed" / name).read_bytes()
        assert [c.message for c in hub.commits(REPO)] == ["initial commit", "circuitflow: publish run tiny"]

        # The set config points at the repo, and circuit-tracer loads the set back from it.
        set_config = yaml.safe_load(staged["config.yaml"])
        assert set_config["scan"] == REPO and set_config["model_name"] == BASE_MODEL
        assert set_config["transcoders"] == [f"hf://{REPO}/layer_0.safetensors", f"hf://{REPO}/layer_1.safetensors"]
        loaded = load_from_hub(hub_env(hub, tmp_path / "hf-download"), REPO, results / "transcoders")
        assert loaded["same"] and loaded["tensors"] >= 8 and loaded["kind"] == "TranscoderSet"
        assert loaded["scan"] == REPO and loaded["model_name"] == BASE_MODEL

        # The model card: the Hub's metadata, and the measured figures of this run.
        from huggingface_hub import ModelCard

        card = ModelCard(staged["README.md"].decode())
        fidelity = json.loads((results / "transcoders/fidelity.json").read_text())
        assert card.data.library_name == "circuit-tracer" and card.data.base_model == BASE_MODEL
        assert card.data.license == "apache-2.0" and "transcoder" in card.data.tags
        figures = card.data.to_dict()["circuitflow"]
        assert figures["mean_fvu"] == round(fidelity["mean_fvu"], 6) and figures["layers"] == [0, 1]
        dataset = json.loads((results / "dataset/summary.json").read_text())
        assert figures["dataset_sha256"] == dataset["source_sha256"] and dataset["source_sha256"] in card.text
        for row in fidelity["layers"]:
            assert f"| {row['layer']} | {row['fvu']:.3f} | {row['l0']:.1f} | {row['dead_fraction']:.3f} |" in card.text
        scores = json.loads((results / "graphs/graph-scores.json").read_text())
        for slug, score in scores.items():
            assert f"| `{slug}` | {score['replacement_score']:.3f} | {score['completeness_score']:.3f} |" in card.text
            assert figures["graph_scores"][slug]["replacement"] == round(score["replacement_score"], 6)
        assert f'ReplacementModel.from_pretrained("{BASE_MODEL}", "{REPO}"' in card.text
        assert hub.cards and hub.cards[-1] == staged["README.md"].decode()  # what the Hub validated

        # Shareable graphs read their features from the repo; no local path or token is published.
        for slug in ("france-capital", "genesis"):
            graph = json.loads((results / "graphs-hub" / f"{slug}.json").read_text())
            assert graph["metadata"]["scan"] == REPO
            assert json.loads(staged[f"graphs/{slug}.json"])["metadata"]["scan"] == REPO
        assert not (results / "graphs-hub/features").exists()
        for name, data in staged.items():
            if name.endswith((".json", ".yaml", ".md", ".csv")):
                assert str(tmp_path).encode() not in data, f"{name} holds the working directory's path"
        receipt = json.loads((results / "hub/receipt.json").read_text())
        head = hub.commits(REPO)[-1]
        assert receipt["commit_id"] == head.oid and receipt["committed"] and receipt["revision"] == "main"
        assert sorted(f["path"] for f in receipt["files"]) == sorted(staged)
        logs = "".join(p.read_text() for p in (results / "logs").rglob("*.log"))
        assert WRITE_TOKEN not in logs + json.dumps(receipt) + run.stdout

        # Unchanged: the upload runs again but sends no commit.
        before = len(hub.requests)
        again = snakemake(tmp_path, "--cores", "2", "hub", "--configfile", "tiny.yaml", "--forcerun",
                          "upload_to_hub", env=hub_env(hub, home))
        assert job_counts(again.stdout) == {"upload_to_hub": 1, "hub": 1, "total": 2}
        assert not [r for r in hub.requests[before:] if "/commit/" in r or "/preupload/" in r]
        receipt = json.loads((results / "hub/receipt.json").read_text())
        assert not receipt["committed"] and receipt["commit_id"] == head.oid
        assert len(hub.commits(REPO)) == 2

        # One changed file (the card's license): one commit holding only that file.
        write_config(tmp_path / "mit.yaml", {"hub": {**config["hub"], "license": "mit"}})
        changed = snakemake(tmp_path, "--cores", "2", "hub", "--configfile", "tiny.yaml", "mit.yaml",
                            env=hub_env(hub, home))
        assert job_counts(changed.stdout)["upload_to_hub"] == 1
        assert len(hub.commits(REPO)) == 3 and hub.commits(REPO)[-1].operations == [("added", "README.md")]
        assert ModelCard((hub.tree(REPO) / "README.md").read_text()).data.license == "mit"
        assert json.loads((results / "hub/receipt.json").read_text())["updated"] == ["README.md"]

        # transcoder.source: the published set explained again from the hub, with no training job,
        # to labelled graphs equal to the first run's; the download records the commit it got.
        counts = run_imported(tmp_path, config, f"hf://{REPO}", "from-hub", ("graphs",),
                              env=hub_env(hub, home))
        assert counts["download_transcoder_set"] == 1 and counts["explain_features"] == 1
        receipt = json.loads((tmp_path / f"resources/transcoders/{REPO}/main.download.json").read_text())
        assert receipt["commit"] == hub.commits(REPO)[-1].oid and "layer_1.safetensors" in receipt["files"]
        labels = [n["clerp"] for n in json.loads((tmp_path / "results/from-hub/graphs/france-capital.json").read_text())["nodes"]
                  if n["feature_type"] == "cross layer transcoder"]
        assert labels and all(labels)
        # Its repo credits the source at the downloaded commit and points at its weights (no copy).
        snakemake(tmp_path, "--cores", "2", "results/from-hub/hub/repo", "--configfile", "from-hub.yaml",
                  env=hub_env(hub, home))
        repo_files = staged_files(tmp_path / "results/from-hub/hub/repo")
        assert not [name for name in repo_files if name.endswith(".safetensors")] and "metrics/fidelity.json" not in repo_files
        republished = yaml.safe_load(repo_files["config.yaml"])
        assert republished["source"]["commit"] == receipt["commit"] and republished["source"]["repo_id"] == REPO
        assert republished["transcoders"][0] == f"hf://{REPO}/layer_0.safetensors?revision={receipt['commit']}"
        assert "imported with circuitflow's `transcoder.source`" in repo_files["README.md"].decode()
        # A repo or revision the hub does not have: one line, before any job.
        for source, message in ((f"hf://{REPO}@no-such-branch", f"repo '{REPO}' has no revision 'no-such-branch'"),
                                ("hf://circuitflow-test/missing", "the hub has no repo 'circuitflow-test/missing'")):
            write_config(tmp_path / "bad-source.yaml", {**config, "run": "bad", "transcoder": {"source": source}})
            refused = snakemake(tmp_path, "-n", "--configfile", "bad-source.yaml", check=False, env=hub_env(hub, home))
            assert refused.returncode != 0 and f"transcoder.source {source}: {message}" in refused.stdout, \
                refused.stdout[-2000:]
    # ... and from the first run's own folder.
    run_imported(tmp_path, config, str(results / "transcoders"), "from-folder")


@pytest.mark.slow
def test_publishing_needs_a_repo_and_a_base_model(tmp_path, tiny_llama_source, tiny_corpus):
    copy_workflow(tmp_path)
    write_config(tmp_path / "tiny.yaml", tiny_config(tmp_path, tiny_llama_source, tiny_corpus))
    """Checked when the DAG is built (so a dry run says it too), before the token and any job."""
    refused = snakemake(tmp_path, "-n", "hub", "--configfile", "tiny.yaml", check=False)
    assert refused.returncode != 0 and "ConfigError: publishing needs hub.repo_id: set it" in refused.stdout
    write_config(tmp_path / "repo.yaml", {"hub": {"repo_id": REPO}})
    refused = snakemake(tmp_path, "-n", "hub", "--configfile", "tiny.yaml", "repo.yaml", check=False)
    assert refused.returncode != 0 and "ConfigError: publishing needs hub.base_model" in refused.stdout
    assert "HF_TOKEN" not in refused.stdout and not (tmp_path / "results").exists()
