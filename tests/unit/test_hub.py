"""The published set config as circuit-tracer parses it, and the path rewriting of shared files."""

from __future__ import annotations

from circuit_tracer.utils.hf_utils import HfUri, parse_hf_uri

from circuitflow.config import HubSettings
from circuitflow.hub.repo import hub_set_config
from circuitflow.io import relative_paths
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
