"""cache_activations on the tiny model: the hooks and the cached values are the model's own, memory
stays flat as the split grows, and shards that would not fit on the disk are refused before any write."""

from __future__ import annotations

import gc
import re
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from circuitflow.activations import ActivationShard, cache_activations
from circuitflow.activations import cache as cache_module
from circuitflow.activations.shards import shard_bytes
from circuitflow.config import CacheActivationsSettings
from circuitflow.config import PrepareDatasetSettings as DatasetSettings
from circuitflow.data import prepare_dataset
from circuitflow.data.dataset import WINDOW_SCHEMA, DatasetError, DiskSpaceError, human_bytes
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


def write_split(path, windows: int, context: int = 16, seed: int = 0) -> None:
    """A train split in prepare_dataset's format: BOS, then random token ids, one document per window."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, 40_000, (windows, context), dtype=np.int32)
    tokens[:, 0] = 1
    docs = np.repeat(np.arange(windows, dtype=np.int32)[:, None], context, axis=1)
    docs[:, 0] = -1
    pq.write_table(pa.table({"seq": np.arange(windows, dtype=np.int32), "domain": ["synthetic"] * windows,
                             "tokens": list(tokens), "docs": list(docs)}, schema=WINDOW_SCHEMA), path)


def cache(model_dir, split, folder, free_bytes=None, **settings):
    settings = CacheActivationsSettings(**{"layers": (0, 1), "batch_size": 100, "row_group_tokens": 512,
                                           "device": "cpu", **settings})
    return cache_activations(model_dir=model_dir, train_split=split,
                             out_shards=[str(folder / f"layer_{layer}.parquet") for layer in settings.layers],
                             out_manifest=folder / "manifest.json", settings=settings, free_bytes=free_bytes)


def test_cache_memory_does_not_grow_with_the_split(tmp_path, tiny_model_dir):
    """8x the windows, the same peak of Python allocations: the split is read a batch at a time
    (it used to be read whole into lists, about 2.9 KB a window of 32 tokens: 2 MB more here).
    What little still grows is transient (the split's hash is read in 4 MB blocks)."""
    peaks = {}
    for windows in (100, 100, 800):  # the first run warms imports and caches up
        write_split(tmp_path / f"{windows}.parquet", windows, context=32)
        gc.collect()
        tracemalloc.start()
        try:
            cache(tiny_model_dir, tmp_path / f"{windows}.parquet", tmp_path / f"out-{windows}")
            peaks[windows] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peaks[800] - peaks[100] < 1_000_000, peaks


def test_cache_refuses_shards_that_do_not_fit_and_writes_nothing(tmp_path, tiny_model_dir):
    write_split(tmp_path / "train.parquet", windows=200)
    n_tokens = 200 * 15
    estimate = 2 * shard_bytes(n_tokens, 64, "float16", 512)
    folder = tmp_path / "activations"
    with pytest.raises(DiskSpaceError, match=(
            rf"^cache_activations \(2 layers x 3,000 tokens x d_model 64 x in\+out at float16\) would write about "
            rf"{human_bytes(estimate)} to {re.escape(str(tmp_path))}, which has {human_bytes(estimate - 1)} free; "
            r"lower dataset.train_tokens or activations.layers, or make room there$")):
        cache(tiny_model_dir, tmp_path / "train.parquet", folder, free_bytes=estimate - 1)
    assert not folder.exists()
    with pytest.raises(DiskSpaceError, match=r"lower dataset.train_tokens or activations.layers \(or set "
                                             r"activations.dtype: float16\)"):
        cache(tiny_model_dir, tmp_path / "train.parquet", folder, free_bytes=estimate, dtype="float32")
    assert not folder.exists()

    # the filesystem's real free space is checked by default; the estimate bounds what is written
    manifest = cache(tiny_model_dir, tmp_path / "train.parquet", folder)
    written = sum((folder / f"layer_{layer}.parquet").stat().st_size for layer in (0, 1))
    assert manifest["n_tokens"] == n_tokens
    assert written <= estimate < written * 1.1


def test_split_with_windows_of_other_lengths_or_columns_is_named(tmp_path, tiny_model_dir):
    write_split(tmp_path / "even.parquet", windows=4)
    table = pq.read_table(tmp_path / "even.parquet")
    rows = table.to_pylist()
    rows[2]["tokens"], rows[2]["docs"] = rows[2]["tokens"][:-1], rows[2]["docs"][:-1]
    pq.write_table(pa.Table.from_pylist(rows, schema=WINDOW_SCHEMA), tmp_path / "ragged.parquet")
    with pytest.raises(DatasetError, match=r"ragged.parquet: its windows are not all 16 tokens long"):
        cache(tiny_model_dir, tmp_path / "ragged.parquet", tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    pq.write_table(table.drop_columns(["docs"]), tmp_path / "no-docs.parquet")
    with pytest.raises(DatasetError, match=r"no-docs.parquet: columns \['docs'\] are missing or not of the types"):
        cache(tiny_model_dir, tmp_path / "no-docs.parquet", tmp_path / "out")


def test_garbage_of_each_forward_is_collected_as_caching_goes(tmp_path, tiny_model_dir, monkeypatch):
    """transformers leaves ~20 cyclic objects per forward that Python frees only in a rare full
    collection (tens of MB on long runs); caching collects them every FULL_GC_EVERY_BATCHES."""
    monkeypatch.setattr(cache_module, "FULL_GC_EVERY_BATCHES", 100)
    write_split(tmp_path / "train.parquet", windows=300, context=8)
    gc.collect()
    cache(tiny_model_dir, tmp_path / "train.parquet", tmp_path / "out", batch_size=1)  # 300 forwards
    assert gc.collect() < 1000  # without the collections: about 6,000
