"""Activation cache: parquet round trip with exact values, hooks, corrupt shards."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from circuitflow.activations import (
    ActivationShard,
    ActivationShardError,
    CacheSettings,
    _ShardWriters,
    activation_schema,
    cache_activations,
    mlp_recorder,
)
from circuitflow.dataset import DatasetSettings, prepare_dataset
from circuitflow.io import read_json


def test_parquet_round_trip_exact(tmp_path):
    rng = np.random.default_rng(0)
    d_model, n = 24, 300
    x = rng.standard_normal((n, d_model)).astype(np.float16)
    y = rng.standard_normal((n, d_model)).astype(np.float16)
    meta = {"seq": np.arange(n, dtype=np.int32) // 10, "pos": np.arange(n, dtype=np.int32) % 10 + 1,
            "doc": np.full(n, 7, np.int32), "token": np.arange(n, dtype=np.int32) * 3}
    path = tmp_path / "layer_0.parquet"
    schema = activation_schema(d_model, "float16")
    with _ShardWriters({0: str(path)}, schema, row_group_tokens=128) as writers:
        for start in range(0, n, 50):  # batches that do not line up with row groups
            part = slice(start, start + 50)
            writers.append(0, {k: v[part] for k, v in meta.items()}, x[part], y[part])

    shard = ActivationShard(path)
    assert (shard.d_model, shard.dtype, shard.n_rows) == (d_model, "float16", n)
    assert shard.row_group_sizes == [150, 150]  # flushed once a row group holds >= 128 rows
    read = [shard.read_row_group(i, columns=("mlp_in", "mlp_out", "token", "pos")) for i in range(2)]
    assert np.array_equal(np.concatenate([r["mlp_in"] for r in read]), x)
    assert np.array_equal(np.concatenate([r["mlp_out"] for r in read]), y)
    assert np.array_equal(np.concatenate([r["token"] for r in read]), meta["token"])
    assert np.array_equal(np.concatenate([r["pos"] for r in read]), meta["pos"])
    # the file is plain parquet: any reader sees the schema and field metadata
    field = pq.read_schema(path).field("mlp_in")
    assert field.type == pa.binary(d_model * 2)
    assert field.metadata[b"dtype"] == b"float16"


def test_failed_write_leaves_no_shard(tmp_path):
    path = tmp_path / "layer_0.parquet"
    schema = activation_schema(4, "float16")
    with pytest.raises(RuntimeError), _ShardWriters({0: str(path)}, schema, 8) as writers:
        writers.append(0, {"seq": np.zeros(2, np.int32), "pos": np.ones(2, np.int32),
                           "doc": np.zeros(2, np.int32), "token": np.zeros(2, np.int32)},
                       np.zeros((2, 4), np.float16), np.zeros((2, 4), np.float16))
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_truncated_shard_is_named(tmp_path):
    path = tmp_path / "layer_3.parquet"
    schema = activation_schema(8, "float16")
    with _ShardWriters({3: str(path)}, schema, 16) as writers:
        for _ in range(4):
            writers.append(3, {"seq": np.zeros(16, np.int32), "pos": np.ones(16, np.int32),
                               "doc": np.zeros(16, np.int32), "token": np.zeros(16, np.int32)},
                           np.ones((16, 8), np.float16), np.ones((16, 8), np.float16))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ActivationShardError, match="layer_3.parquet"):
        ActivationShard(path)
    corrupt = tmp_path / "layer_4.parquet"
    corrupt.write_bytes(data[:200] + b"\0" * 400 + data[600:])  # footer intact, pages damaged
    with pytest.raises(ActivationShardError, match="layer_4.parquet"):
        shard = ActivationShard(corrupt)
        for i in range(len(shard.row_group_sizes)):
            shard.read_row_group(i)


def test_recorder_matches_mlp_module(tiny_model_dir):
    """Hooks capture the MLP's input and output (positions >= 1), and stop after the last layer."""
    from circuitflow.model import load_model

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
    prepare_dataset(settings, tiny_model_dir, tmp_path / "train.parquet", tmp_path / "val.parquet",
                    tmp_path / "summary.json")
    shards = {0: str(tmp_path / "layer_0.parquet"), 1: str(tmp_path / "layer_1.parquet")}
    manifest = cache_activations(tiny_model_dir, tmp_path / "train.parquet", shards,
                                 tmp_path / "manifest.json",
                                 CacheSettings(layers=(0, 1), batch_size=4, row_group_tokens=100))
    windows = pq.read_table(tmp_path / "train.parquet")
    expected_tokens = windows.num_rows * 15
    assert manifest["n_tokens"] == expected_tokens == read_json(tmp_path / "manifest.json")["n_tokens"]
    assert manifest["hooks"]["mlp_in"] == "blocks.{layer}.mlp.hook_in"
    shard = ActivationShard(shards[1])
    assert shard.n_rows == expected_tokens
    first = shard.read_row_group(0, columns=("mlp_in", "mlp_out", "token", "pos", "seq"))
    tokens = windows.column("tokens").to_pylist()
    seqs = windows.column("seq").to_pylist()
    assert first["pos"][0] == 1 and first["token"][0] == tokens[0][1] and first["seq"][0] == seqs[0]

    # the stored vectors are the model's own MLP in/out for that window (float16-rounded)
    from circuitflow.model import load_model

    model, _ = load_model(tiny_model_dir)
    recorder = mlp_recorder(model, (1,))
    with torch.no_grad():
        x, y = recorder.run(model, torch.tensor([tokens[0]]))[1]
    recorder.close()
    assert np.allclose(first["mlp_in"][:15].astype(np.float32), x[0].numpy(), atol=2e-3, rtol=2e-3)
    assert np.allclose(first["mlp_out"][:15].astype(np.float32), y[0].numpy(), atol=2e-3, rtol=2e-3)
    assert manifest["layers"]["1"]["mlp_out"]["total_variance"] > 0
