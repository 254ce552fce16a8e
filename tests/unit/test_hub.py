"""The published set config as circuit-tracer parses it, and the path rewriting of shared files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from circuit_tracer.utils.hf_utils import HfUri, parse_hf_uri

from circuitflow.config import HubSettings
from circuitflow.hub.repo import hub_set_config
from circuitflow.io import relative_paths, write_json
from circuitflow.workflow import hub_scan

LOCAL_SET = {"model_kind": "transcoder_set", "model_name": "/abs/resources/models/m", "scan": "./data/features",
             "layers": {0: "layer_0.safetensors", 1: "layer_1.safetensors"},
             "transcoders": ["/abs/results/r/transcoders/layer_0.safetensors",
                             "/abs/results/r/transcoders/layer_1.safetensors"]}


def test_published_config_points_circuit_tracer_at_the_repo_and_revision():
    for revision, query in (("main", ""), ("v2", "?revision=v2")):
        config = hub_set_config(LOCAL_SET, "me/run", revision, "org/base")
        assert config["model_name"] == "org/base"
        assert config["transcoders"] == [f"hf://me/run/layer_{layer}.safetensors{query}" for layer in (0, 1)]
        for layer, uri in enumerate(config["transcoders"]):
            assert parse_hf_uri(uri) == ("me/run", f"layer_{layer}.safetensors", None if revision == "main" else "v2")
        # the scan is what circuit-tracer's loader sets for this reference, and what its frontend reads
        assert config["scan"] == hub_scan(HubSettings(repo_id="me/run", revision=revision))
        assert HfUri.from_str(config["scan"]) == ("me/run", None, None if revision == "main" else "v2")
    assert LOCAL_SET["scan"] == "./data/features"  # the local config is not modified
    cross_layer = {**LOCAL_SET, "model_kind": "cross_layer_transcoder"}
    del cross_layer["transcoders"]
    assert "transcoders" not in hub_set_config(cross_layer, "me/run", "main", "org/base")  # load_clt reads the folder


def test_paths_under_the_working_directory_become_relative():
    data = {"source": "/work/run/resources/corpus/a.jsonl", "elsewhere": "/data/b.jsonl",
            "nested": [{"prompt": "/work/run/config/prompts/x.txt"}], "similar": "/work/run2/c", "n": 3}
    assert relative_paths(data, "/work/run") == {
        "source": "resources/corpus/a.jsonl", "elsewhere": "/data/b.jsonl",
        "nested": [{"prompt": "config/prompts/x.txt"}], "similar": "/work/run2/c", "n": 3}
    assert hub_scan(HubSettings()) is None


IMPORTED = {"model_kind": "transcoder_set", "model_name": "/abs/resources/models/m", "feature_input_hook": "mlp.hook_in",
            "feature_output_hook": "mlp.hook_out", "activation": "topk", "k": 16, "scan": "./data/features",
            "layers": {0: "/abs/resources/transcoders/src/set/main/layer_0.safetensors",
                       1: "/abs/resources/transcoders/src/set/main/external/google/scope/layer_1/params.npz"},
            "source": {"uri": "hf://src/set", "repo_id": "src/set", "revision": "main", "commit": "c0ffee",
                       "folder": "/abs/resources/transcoders/src/set/main", "model_name": "org/base"}}


def test_an_imported_set_is_credited_and_points_at_the_source_files():
    from circuitflow.hub.repo import imported_hub_config

    config, files = imported_hub_config(IMPORTED, "me/run", "main", "org/base", uploaded=False)
    assert files == {} and config["source"]["commit"] == "c0ffee" and config["source"]["repo_id"] == "src/set"
    assert config["transcoders"] == ["hf://src/set/layer_0.safetensors?revision=c0ffee",
                                     "hf://google/scope/layer_1/params.npz"]
    assert parse_hf_uri(config["transcoders"][0]) == ("src/set", "layer_0.safetensors", "c0ffee")
    assert (config["activation"], config["k"], config["scan"], config["model_name"]) == ("topk", 16, "me/run", "org/base")
    uploaded, files = imported_hub_config(IMPORTED, "me/run", "v2", "org/base", uploaded=True)
    assert list(files) == ["layer_0.safetensors", "layer_1.npz"]
    assert uploaded["transcoders"] == ["hf://me/run/layer_0.safetensors?revision=v2", "hf://me/run/layer_1.npz?revision=v2"]
    local = {**IMPORTED, "source": {**IMPORTED["source"], "repo_id": None, "uri": "/data/set"}}
    assert "transcoders" not in imported_hub_config(local, "me/run", "main", "org/base", uploaded=False)[0]


def test_the_card_of_an_imported_set_credits_it_without_fidelity():
    from circuitflow.config import StageHubRepoSettings
    from circuitflow.hub.model_card import render_model_card
    from circuitflow.hub.repo import imported_hub_config

    config, _ = imported_hub_config({**IMPORTED, "d_model": 64, "n_features": 48, "skip_connection": False},
                                    "me/run", "main", "org/base", uploaded=False)
    settings = StageHubRepoSettings(run="r", model_source="org/base", base_model="org/base", repo_id="me/run")
    card = render_model_card(settings=settings, set_config=config, fidelity=None, dataset={"source": "c.jsonl"},
                             training={}, feature_metadata={"total_tokens": 100}, graph_scores=None, interp={})
    assert "[src/set](https://huggingface.co/src/set) at commit `c0ffee`" in card
    assert "fidelity was not measured" in card and "Not trained here" in card
    assert "48 features per layer" in card and "`topk` activation (k = 16)" in card


def test_published_values_carry_no_credentials_private_endpoints_or_local_paths(tmp_path):
    from circuitflow.hub.shareable import PRIVATE_ENDPOINT, leaks, public_url, shareable

    assert public_url("https://alice:s3cret@api.example.com:8443/v1") == "https://api.example.com:8443/v1"
    assert public_url("https://api.example.com/v1?api_key=K&model=m") == "https://api.example.com/v1?model=m"
    assert public_url("https://api.example.com/v1?model=m") == "https://api.example.com/v1?model=m"  # untouched
    for internal in ("http://127.0.0.1:8080/v1", "http://10.1.2.3/v1", "http://[::1]:9/v1", "http://gpu-node-7:8000/v1",
                     "http://judge.cluster.internal/v1", "http://box.local/v1", "http://169.254.0.1/",
                     "http://x:y@localhost"):
        assert public_url(internal) == PRIVATE_ENDPOINT, internal
    root = tmp_path / "work"
    data = {"model": "qwen at http://alice:s3cret@10.1.2.3:8000/v1",
            "failed": [{"error": "http://10.1.2.3:8000/v1: 3 of 4 items failed"}],
            "source": "/data/private/corpus.jsonl", "gguf": "~/models/judge.gguf", "windows": "C:\\models\\m.gguf",
            "inside": f"{root}/results/r/features/json", "said": f"cannot read {root}/config/x.yaml",
            "kept": ["hf://me/run/layer_0.safetensors?revision=v2", "results/r/a.json", "/", "/n", "and/or", 3]}
    assert shareable(data, root) == {
        "model": f"qwen at {PRIVATE_ENDPOINT}", "failed": [{"error": f"{PRIVATE_ENDPOINT}: 3 of 4 items failed"}],
        "source": "corpus.jsonl", "gguf": "judge.gguf", "windows": "m.gguf",
        "inside": "results/r/features/json", "said": "cannot read config/x.yaml", "kept": data["kept"]}
    assert "password" in leaks('{"url": "https://bob:pw@example.com/g"}', root)
    assert "working directory" in leaks(f'{{"prompt": "{root}/config/p.txt"}}', root)
    assert "gpu-node-7" in leaks("served by http://gpu-node-7:8000/v1.", root)
    assert leaks('{"scan": "me/run", "link": "https://huggingface.co/me/run"}', root) is None


def _imported_run(tmp_path):
    """The inputs of stage_hub_repo for a local imported set, made by a judge behind a
    credentialed private endpoint, from a corpus outside the working directory."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    (work / "packed").mkdir(parents=True)
    (elsewhere / "set").mkdir(parents=True)
    (elsewhere / "set" / "layer_0.safetensors").write_bytes(b"weights")
    (work / "packed" / "index.json.gz").write_bytes(b"index")
    (work / "set.yaml").write_text(yaml.safe_dump({
        "model_kind": "transcoder_set", "model_name": "org/base", "scan": "./data/features", "d_model": 8,
        "n_features": 16, "activation": "relu", "skip_connection": False, "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "mlp.hook_out", "layers": {0: str(elsewhere / "set" / "layer_0.safetensors")},
        "source": {"uri": str(elsewhere / "set"), "repo_id": None, "revision": None, "commit": None,
                   "folder": str(elsewhere / "set"), "model_name": "org/base"}}))
    write_json(work / "metadata.json", {"total_tokens": 100, "activations": str(work / "results/r/activations")})
    write_json(work / "dataset.json", {"source": str(elsewhere / "corpus.jsonl"), "source_sha256": "ab" * 32,
                                       "splits": {}, "context_length": 8, "seed": 0})
    judge = "qwen at http://alice:s3cret@10.1.2.3:8000/v1"
    write_json(work / "feature_classifications.json", {
        "metadata": {"model": judge, "n_classified": 1, "input_dir": str(work / "results/r/features/json"),
                     "failed": [{"cantor_id": 2, "error": "http://alice:s3cret@10.1.2.3:8000/v1: HTTP 500"}]},
        "shares": {"overall": {"language": 1.0}}, "features": []})
    return work, elsewhere


def stage(work: Path, **inputs):
    from circuitflow.config import StageHubRepoSettings
    from circuitflow.hub.repo import stage_hub_repo

    settings = StageHubRepoSettings(run="r", model_source="org/base", base_model="org/base", repo_id="me/run")
    return stage_hub_repo(transcoder_set=work / "set.yaml", weights=[], architectures=[], training_metrics=[],
                          fidelity=None, fidelity_table=None, packed=work / "packed",
                          feature_metadata=work / "metadata.json", dataset_summary=work / "dataset.json",
                          out_dir=work / "repo", settings=settings,
                          interp=[work / "feature_classifications.json"], **inputs)


def test_the_staged_repo_names_no_credential_private_endpoint_or_local_folder(tmp_path, monkeypatch):
    work, elsewhere = _imported_run(tmp_path)
    monkeypatch.chdir(work)
    staged = stage(work)
    texts = {name: (work / "repo" / name).read_text() for name in staged["files"] if not name.startswith("features/")}
    for name, text in texts.items():
        for private in ("s3cret", "alice", "10.1.2.3", str(tmp_path)):
            assert private not in text, f"{name} publishes {private}"
    classified = json.loads(texts["interp/feature_classifications.json"])["metadata"]
    assert classified["model"] == "qwen at a private endpoint" and classified["input_dir"] == "results/r/features/json"
    assert json.loads(texts["dataset/summary.json"])["source"] == "corpus.jsonl"
    assert yaml.safe_load(texts["config.yaml"])["source"]["uri"] == "set"
    assert "Classified by qwen at a private endpoint: 1 features." in texts["README.md"]


def test_a_copied_file_with_a_credential_or_local_path_is_refused(tmp_path, monkeypatch):
    from circuitflow.hub import HubRepoError

    work, _ = _imported_run(tmp_path)
    monkeypatch.chdir(work)
    graphs = work / "graphs"
    graphs.mkdir()
    write_json(graphs / "graph-scores.json", {})
    for text, found in (("https://bob:pw@example.com/p.txt", "a URL with a user name or password"),
                        (f"{work}/config/prompts/p.txt", f"a path under the working directory ({work})")):
        write_json(graphs / "p.json", {"metadata": {"slug": "p", "scan": "me/run", "prompt_file": text}})
        with pytest.raises(HubRepoError) as refused:
            stage(work, graphs=graphs)
        assert str(refused.value) == (f"{graphs / 'p.json'} would publish {found}; remove that from it (or from what "
                                      "it is made of) and rerun stage_hub_repo")
        assert "pw" not in str(refused.value) and not (work / "repo").exists()


def test_the_card_names_a_model_outside_the_working_directory_by_its_file(tmp_path, monkeypatch):
    from circuitflow.config import StageHubRepoSettings
    from circuitflow.hub.model_card import render_model_card

    gguf = tmp_path / "models" / "smol.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    config = hub_set_config({**LOCAL_SET, "n_features": 16, "activation": "relu", "feature_input_hook": "a",
                             "feature_output_hook": "b"}, "me/run", "main", "org/base")
    settings = StageHubRepoSettings(run="r", model_source=str(gguf), base_model="org/base", repo_id="me/run")
    card = render_model_card(settings=settings, set_config=config, fidelity=None, dataset={"source": "c.jsonl"},
                             training={}, feature_metadata={"total_tokens": 100}, graph_scores=None, interp={})
    assert "activations of `smol.gguf`" in card and str(tmp_path) not in card
