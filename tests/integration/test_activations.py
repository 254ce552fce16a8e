"""cache_activations on the tiny model: the hooks and the cached values are the model's own."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import torch

from circuitflow.activations import ActivationShard, cache_activations
from circuitflow.config import CacheActivationsSettings
from circuitflow.config import PrepareDatasetSettings as DatasetSettings
from circuitflow.data import prepare_dataset
from circuitflow.io import read_json
from circuitflow.model import load_model
from circuitflow.model.hooks import mlp_recorder


def test_recorder_matches_mlp_module(tiny_model_dir):
    """Hooks capture the MLP's input and output (positions >= 1), and stop after the last layer."""
    model, _ = load_model(tiny_model_dir)
    ids = torch.randint(0, 1000, (2, 9))
    recorder = mlp_recorder(model, (0, 1))
    with torch.no_grad():
        captured = recorder.run(model, ids)
        recorder.close()
        x, y = captured[1]
        assert x.shape == (2, 8, 64) and y.shape == (2, 8, 64)
        assert torch.allclose(model.model.layers[1].mlp(x), y, atol=1e-6)
        # the MLP input is the post-attention RMSNorm of the residual (circuit-tracer's mlp.hook_in)
        hidden = model(ids, output_hidden_states=True).hidden_states
        assert not torch.allclose(x, hidden[1][:, 1:])


def test_cache_activations_end_to_end(tmp_path, tiny_model_dir, tiny_corpus):
    settings = DatasetSettings(source=str(tiny_corpus), context_length=16, train_tokens=600,
                               validation_tokens=150)
    prepare_dataset(model_dir=tiny_model_dir, out_train=tmp_path / "train.parquet",
                    out_validation=tmp_path / "val.parquet", out_summary=tmp_path / "summary.json", settings=settings)
    shards = {0: str(tmp_path / "layer_0.parquet"), 1: str(tmp_path / "layer_1.parquet")}
    manifest = cache_activations(model_dir=tiny_model_dir, train_split=tmp_path / "train.parquet",
                                 out_shards=list(shards.values()), out_manifest=tmp_path / "manifest.json",
                                 settings=CacheActivationsSettings(layers=(0, 1), batch_size=4, row_group_tokens=100,
                                                                   device="cpu"))
    windows = pq.read_table(tmp_path / "train.parquet")
    expected_tokens = windows.num_rows * (16 - 1)  # BOS positions are not cached
    assert manifest["n_tokens"] == expected_tokens == read_json(tmp_path / "manifest.json")["n_tokens"]
    assert manifest["hooks"]["mlp_in"] == "blocks.{layer}.mlp.hook_in"
    shard = ActivationShard(shards[1])
    assert shard.n_rows == expected_tokens
    first = shard.read_row_group(0, columns=("mlp_in", "mlp_out", "token", "pos", "seq"))
    tokens = windows.column("tokens").to_pylist()
    seqs = windows.column("seq").to_pylist()
    assert first["pos"][0] == 1 and first["token"][0] == tokens[0][1] and first["seq"][0] == seqs[0]

    # the stored vectors are the model's own MLP in/out for that window (float16-rounded)
    model, _ = load_model(tiny_model_dir)
    recorder = mlp_recorder(model, (1,))
    with torch.no_grad():
        x, y = recorder.run(model, torch.tensor([tokens[0]]))[1]
    recorder.close()
    assert np.allclose(first["mlp_in"][:15].astype(np.float32), x[0].numpy(), atol=2e-3, rtol=2e-3)
    assert np.allclose(first["mlp_out"][:15].astype(np.float32), y[0].numpy(), atol=2e-3, rtol=2e-3)
    assert manifest["layers"]["1"]["mlp_out"]["total_variance"] > 0
