"""Activation shards: parquet round trip with exact values, atomic writes, corrupt shards, the size estimate."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from circuitflow.activations import ActivationShard, ActivationShardError, ShardWriters, activation_schema
from circuitflow.activations.shards import shard_bytes


def test_parquet_round_trip_exact(tmp_path):
    rng = np.random.default_rng(0)
    d_model, n = 24, 300
    x = rng.standard_normal((n, d_model)).astype(np.float16)
    y = rng.standard_normal((n, d_model)).astype(np.float16)
    meta = {"seq": np.arange(n, dtype=np.int32) // 10, "pos": np.arange(n, dtype=np.int32) % 10 + 1,
            "doc": np.full(n, 7, np.int32), "token": np.arange(n, dtype=np.int32) * 3}
    path = tmp_path / "layer_0.parquet"
    schema = activation_schema(d_model, "float16")
    with ShardWriters({0: str(path)}, schema, row_group_tokens=128) as writers:
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
    with pytest.raises(RuntimeError), ShardWriters({0: str(path)}, schema, 8) as writers:
        writers.append(0, {"seq": np.zeros(2, np.int32), "pos": np.ones(2, np.int32),
                           "doc": np.zeros(2, np.int32), "token": np.zeros(2, np.int32)},
                       np.zeros((2, 4), np.float16), np.zeros((2, 4), np.float16))
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_truncated_shard_is_named(tmp_path):
    path = tmp_path / "layer_3.parquet"
    schema = activation_schema(8, "float16")
    with ShardWriters({3: str(path)}, schema, 16) as writers:
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


def write_shard(path, rows=4096, d_model=64, seed=0, row_group=1024):
    rng = np.random.default_rng(seed)
    with ShardWriters({0: str(path)}, activation_schema(d_model, "float16"), row_group) as writers:
        for start in range(0, rows, 512):
            meta = {"seq": np.zeros(512, np.int32), "pos": np.ones(512, np.int32),
                    "doc": np.zeros(512, np.int32), "token": np.zeros(512, np.int32)}
            writers.append(0, meta, rng.standard_normal((512, d_model)).astype(np.float16),
                           rng.standard_normal((512, d_model)).astype(np.float16))


def test_overwritten_bytes_inside_a_shard_are_an_error(tmp_path):
    """64 KiB of float16 1.0 in the middle of a shard: the page checksums catch it, naming the
    shard and how to rebuild it (parquet alone would read the altered vectors as data)."""
    path = tmp_path / "layer_0.parquet"
    write_shard(path, rows=4096, row_group=4096)  # mlp_out: one 512 KiB column chunk
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(5)
    middle = chunk.data_page_offset + chunk.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    before = pq.read_table(path).column("mlp_out")
    data[middle:middle + 65536] = np.ones(32768, np.float16).tobytes()
    path.write_bytes(bytes(data))
    unchecked = pq.read_table(path).column("mlp_out")  # without verification the damage is silent
    assert len(unchecked) == len(before) and not unchecked.equals(before)
    shard = ActivationShard(path)
    with pytest.raises(ActivationShardError, match=r"layer_0.parquet: row group \d+ is corrupt .*--forcerun"):
        for i in range(len(shard.row_group_sizes)):
            shard.read_row_group(i)


def test_truncated_shard_says_how_to_rebuild(tmp_path):
    path = tmp_path / "layer_0.parquet"
    write_shard(path, rows=1024)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ActivationShardError, match=r"layer_0.parquet is truncated or corrupt .*--forcerun .*layer_0"):
        ActivationShard(path)


def test_shard_without_checksums_is_refused(tmp_path):
    path = tmp_path / "old.parquet"
    schema = activation_schema(4, "float16").remove_metadata()
    table = pa.table({name: pa.array([], type=schema.field(name).type) for name in schema.names}, schema=schema)
    pq.write_table(table, path)
    with pytest.raises(ActivationShardError, match="has no page checksums"):
        ActivationShard(path)


@pytest.mark.parametrize("d_model, dtype, rows, row_group, batch", [
    (64, "float16", 4000, 512, 120),  # the tiny model's shape
    (576, "float32", 20_000, 8192, 1016),  # SmolLM2's width, the default row group, float32
    (8, "float16", 10_000, 16, 5),  # many small row groups: the overhead dominates
    (2048, "float16", 9000, 8192, 4000),  # wide vectors: one page per write batch
])
def test_shard_bytes_bounds_the_written_size(tmp_path, d_model, dtype, rows, row_group, batch):
    """The estimate the disk check uses is an upper bound of what `ShardWriters` writes, and a close
    one once the vectors outweigh parquet's headers."""
    rng = np.random.default_rng(0)
    path = tmp_path / "layer_0.parquet"
    with ShardWriters({0: str(path)}, activation_schema(d_model, dtype), row_group) as writers:
        for start in range(0, rows, batch):
            n = min(batch, rows - start)
            meta = {name: np.zeros(n, np.int32) for name in ("seq", "pos", "doc", "token")}
            writers.append(0, meta, rng.standard_normal((n, d_model)).astype(dtype),
                           rng.standard_normal((n, d_model)).astype(dtype))
    written = path.stat().st_size
    estimate = shard_bytes(rows, d_model, dtype, row_group)
    assert written <= estimate
    if d_model >= 64:
        assert estimate < written * 1.03
