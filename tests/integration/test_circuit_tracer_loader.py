"""A JumpReLU set trained by circuitflow loads unchanged through circuit-tracer's own loader and
its `circuit-tracer attribute` CLI, and gives the same attribution graph as our loader."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml

from circuitflow.attribution.attribute import load_replacement_model
from circuitflow.config import TrainingSettings, TrainTranscoderSettings, TranscoderArchitecture, WriteTranscoderSetSettings
from circuitflow.transcoders import train_transcoder, write_transcoder_set

from ..conftest import tiny_shards

PROMPT = "The capital of France is"
JUMPRELU = TranscoderArchitecture(activation="jumprelu", n_features=96, k=6, skip_connection=True)


@pytest.fixture(scope="module")
def jumprelu_set(tmp_path_factory, tiny_model_dir, tiny_corpus):
    """A trained JumpReLU set for both layers of the tiny model, in a folder named `tc`."""
    tmp = tmp_path_factory.mktemp("ct-loader")
    shards = tiny_shards(tmp, tiny_model_dir, tiny_corpus)
    folder = tmp / "tc"
    settings = TrainTranscoderSettings(architecture=JUMPRELU, training=TrainingSettings(
        steps=40, batch_size=256, warmup_steps=4, eval_tokens=256, calibration_tokens=1024, device="cpu"))
    for layer, shard in enumerate(shards):
        metrics = train_transcoder(shard_path=shard, layer=layer, out_weights=folder / f"layer_{layer}.safetensors",
                                   out_architecture=folder / f"layer_{layer}.architecture.json",
                                   out_metrics=folder / f"layer_{layer}.metrics.json", settings=settings)
        assert metrics["calibration"]["features_never_picked"] < JUMPRELU.n_features
    write_transcoder_set(model_dir=tiny_model_dir,
                         weights=[folder / "layer_0.safetensors", folder / "layer_1.safetensors"],
                         out_config=folder / "config.yaml",
                         settings=WriteTranscoderSetSettings(layers=(0, 1), scan="tiny-jumprelu"))
    return folder


def attribute_graph(model):
    from circuit_tracer import attribute

    return attribute(prompt=PROMPT, model=model, max_n_logits=5, desired_logit_prob=0.9, batch_size=64,
                     max_feature_nodes=200)


def assert_same_graph(a, b) -> None:
    assert torch.equal(a.input_tokens, b.input_tokens)
    assert torch.equal(a.active_features, b.active_features)
    assert torch.equal(a.selected_features, b.selected_features)
    assert torch.allclose(a.activation_values, b.activation_values, atol=1e-5)
    assert torch.allclose(a.adjacency_matrix, b.adjacency_matrix, atol=1e-4, rtol=1e-4)


def test_own_loader_and_cli_give_our_graph(jumprelu_set, tiny_model_dir, tmp_path):
    from circuit_tracer import ReplacementModel
    from circuit_tracer.utils.hf_utils import load_transcoders

    ours = attribute_graph(load_replacement_model(tiny_model_dir, jumprelu_set / "config.yaml", "nnsight", "cpu"))
    assert ours.active_features.shape[0] > 0

    config = yaml.safe_load((jumprelu_set / "config.yaml").read_text())
    theirs_set = load_transcoders(config, device=torch.device("cpu"), dtype=torch.float32)
    theirs = ReplacementModel.from_pretrained_and_transcoders(
        config["model_name"], theirs_set, backend="nnsight", device=torch.device("cpu"), dtype=torch.float32)
    assert_same_graph(attribute_graph(theirs), ours)

    assert_same_graph(cli_graph(jumprelu_set, tmp_path), ours)


def cli_graph(set_folder, tmp_path):
    """The graph of `circuit-tracer attribute` for PROMPT. The CLI finds a local set through its
    cache folder (CIRCUIT_TRACER_CACHE_DIR/<name>/config.yaml), the model through its model_name."""
    from circuit_tracer.graph import Graph

    out = tmp_path / "cli.pt"
    env = {**os.environ, "CIRCUIT_TRACER_CACHE_DIR": str(set_folder.parent), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "circuit_tracer", "attribute", "--prompt", PROMPT, "--transcoder_set",
               set_folder.name, "--backend", "nnsight", "--graph_output_path", str(out), "--max_n_logits", "5",
               "--desired_logit_prob", "0.9", "--batch_size", "64", "--max_feature_nodes", "200"]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return Graph.from_pt(str(out))
