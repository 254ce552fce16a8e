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
