"""cache_activations: run the model over the train split and stream MLP inputs/outputs to parquet.

The hook points are circuit-tracer's ``blocks.{l}.mlp.hook_in`` (the normalized residual that
enters the MLP) and ``blocks.{l}.mlp.hook_out`` (the MLP output), read with forward hooks on the
Hugging Face model's MLP modules, so transcoders trained on them plug into circuit-tracer's
replacement model unchanged.

Parquet schema of ``layer_{l}.parquet`` (one row per token, BOS positions dropped):

=========  =========================  ====================================================
column     type                       meaning
=========  =========================  ====================================================
seq        int32                      window index in the train split
pos        int32                      position in the window (1..context_length-1)
doc        int32                      source record index (-1 for an EOS separator)
token      int32                      token id at that position
mlp_in     fixed_size_binary[d*b]     MLP input vector, ``d_model`` little-endian floats
mlp_out    fixed_size_binary[d*b]     MLP output vector, same layout
=========  =========================  ====================================================

``b`` is 2 bytes for float16 (default) or 4 for float32; the field metadata carries
``dtype`` and ``d_model``. Vectors are stored as raw fixed-size binary rather than
``fixed_size_list`` because parquet encodes list levels per element, which made writing 15x
slower. `ActivationShard` reads them back as numpy arrays.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from circuitflow.io import atomic_path, sha256_file, write_json
from circuitflow.logs import Progress

log = logging.getLogger("circuitflow.activations")

HOOK_IN = "mlp.hook_in"
HOOK_OUT = "mlp.hook_out"
VECTOR_COLUMNS = ("mlp_in", "mlp_out")


class ActivationShardError(ValueError):
    """A cached activation shard is missing, truncated or corrupt."""


@dataclass(frozen=True)
class CacheSettings:
    layers: tuple[int, ...]
    batch_size: int = 8
    dtype: str = "float16"
    row_group_tokens: int = 16384
    model_dtype: str = "float32"
    device: str = "cpu"


def activation_schema(d_model: int, dtype: str) -> pa.Schema:
    width = d_model * np.dtype(dtype).itemsize
    meta = {b"dtype": dtype.encode(), b"d_model": str(d_model).encode()}
    return pa.schema([
        ("seq", pa.int32()), ("pos", pa.int32()), ("doc", pa.int32()), ("token", pa.int32()),
        pa.field("mlp_in", pa.binary(width), metadata=meta),
        pa.field("mlp_out", pa.binary(width), metadata=meta),
    ])


def vectors_to_arrow(vectors: np.ndarray) -> pa.FixedSizeBinaryArray:
    vectors = np.ascontiguousarray(vectors)
    width = vectors.shape[1] * vectors.dtype.itemsize
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(vectors), [None, pa.py_buffer(vectors)])


def arrow_to_vectors(column: pa.ChunkedArray | pa.Array, dtype: str, d_model: int) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    data = column.buffers()[1]
    start = column.offset * d_model
    return np.frombuffer(data, dtype=dtype)[start:start + len(column) * d_model].reshape(len(column), d_model)


def decoder_layers(model) -> list:
    """The model's decoder blocks, found generically (Llama/Qwen/Gemma `model.layers`, GPT-2 `h`)."""
    import torch

    n_layers = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers and hasattr(module[0], "mlp"):
            return list(module)
    raise ValueError(f"cannot find {n_layers} decoder blocks with an `mlp` submodule in {type(model).__name__}")


class _StopForward(Exception):
    """Raised by the last hook: later layers and the LM head are not needed."""


class ModuleRecorder:
    """Forward hooks on some modules, keyed by layer, storing `capture(inputs, output)`.

    The forward pass is stopped right after the last hooked module, so later layers and the
    LM head are never computed. Used for caching (MLP in/out) and feature collection.
    """

    def __init__(self, modules: dict[int, object], capture):
        self.capture = capture
        self.captured: dict[int, object] = {}
        last = max(modules)
        self.handles = [module.register_forward_hook(self._hook(key, key == last))
                        for key, module in modules.items()]

    def _hook(self, key: int, is_last: bool):
        def hook(module, inputs, output):
            self.captured[key] = self.capture(inputs, output)
            if is_last:
                raise _StopForward
        return hook

    def run(self, model, input_ids) -> dict:
        self.captured = {}
        try:
            model(input_ids=input_ids, use_cache=False)
        except _StopForward:
            pass
        return self.captured

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _mlp_in_out(inputs, output) -> tuple:
    """MLP input and output at positions >= 1 (circuit-tracer zeroes position 0)."""
    y = output[0] if isinstance(output, tuple) else output
    return inputs[0][:, 1:].detach(), y[:, 1:].detach()


def mlp_recorder(model, layers: tuple[int, ...]) -> ModuleRecorder:
    """Records each layer's MLP input and output (mlp.hook_in / mlp.hook_out)."""
    blocks = decoder_layers(model)
    return ModuleRecorder({layer: blocks[layer].mlp for layer in layers}, _mlp_in_out)


class _RunningStats:
    """Per-layer sums for the manifest: mean vector norm, mean L2 norm, total variance."""

    def __init__(self, d_model: int):
        self.n = 0
        self.sum = np.zeros(d_model, np.float64)
        self.sum_sq = 0.0
        self.sum_norm = 0.0

    def add(self, vectors) -> None:
        v = vectors.double()
        self.n += v.shape[0]
        self.sum += v.sum(0).numpy()
        self.sum_sq += float((v * v).sum())
        self.sum_norm += float(v.norm(dim=-1).sum())

    def summary(self) -> dict:
        mean = self.sum / max(self.n, 1)
        return {
            "mean_norm": float(np.linalg.norm(mean)),
            "mean_l2_norm": self.sum_norm / max(self.n, 1),
            "total_variance": self.sum_sq / max(self.n, 1) - float(mean @ mean),
        }


def cache_activations(model_dir: str | Path, train_split: str | Path, out_shards: dict[int, str],
                      out_manifest: str | Path, settings: CacheSettings) -> dict:
    """Stream every layer's MLP in/out over the train split into one parquet shard per layer."""
    import torch

    from circuitflow.dataset import read_windows
    from circuitflow.model import load_model

    model, _ = load_model(model_dir, settings.model_dtype)
    model.to(settings.device)
    windows = read_windows(train_split)
    tokens = windows.column("tokens").to_pylist()
    docs = windows.column("docs").to_pylist()
    seqs = windows.column("seq").to_numpy()
    d_model = model.config.hidden_size
    context = len(tokens[0])
    n_tokens = len(tokens) * (context - 1)
    schema = activation_schema(d_model, settings.dtype)
    recorder = mlp_recorder(model, settings.layers)
    stats = {layer: (_RunningStats(d_model), _RunningStats(d_model)) for layer in settings.layers}
    progress = Progress(log, "cache_activations", n_tokens, "tokens")
    log.info("caching layers %s of %s: %d windows x %d tokens, d_model %d, %s",
             list(settings.layers), model_dir, len(tokens), context - 1, d_model, settings.dtype)

    with _ShardWriters(out_shards, schema, settings.row_group_tokens) as writers, torch.inference_mode():
        forward_seconds = 0.0
        for start in range(0, len(tokens), settings.batch_size):
            stop = min(start + settings.batch_size, len(tokens))
            ids = torch.tensor(tokens[start:stop], dtype=torch.long, device=settings.device)
            began = time.perf_counter()
            captured = recorder.run(model, ids)
            forward_seconds += time.perf_counter() - began
            meta = {
                "seq": np.repeat(seqs[start:stop], context - 1).astype(np.int32),
                "pos": np.tile(np.arange(1, context, dtype=np.int32), stop - start),
                "doc": np.asarray([d[1:] for d in docs[start:stop]], np.int32).reshape(-1),
                "token": ids[:, 1:].reshape(-1).cpu().numpy().astype(np.int32),
            }
            for layer in settings.layers:
                x, y = (t.reshape(-1, d_model).cpu() for t in captured[layer])
                stats[layer][0].add(x)
                stats[layer][1].add(y)
                writers.append(layer, meta,
                               x.to(getattr(torch, settings.dtype)).numpy(),
                               y.to(getattr(torch, settings.dtype)).numpy())
            progress.update(ids[:, 1:].numel())
    recorder.close()

    manifest = {
        "model_dir": str(model_dir),
        "model_architecture": type(model).__name__,
        "train_split": str(train_split),
        "dataset_sha256": sha256_file(train_split),
        "d_model": d_model,
        "n_tokens": n_tokens,
        "context_length": context,
        "dtype": settings.dtype,
        "hooks": {"mlp_in": f"blocks.{{layer}}.{HOOK_IN}", "mlp_out": f"blocks.{{layer}}.{HOOK_OUT}"},
        "hf_modules": "input and output of decoder block `mlp` modules",
        "layers": {
            str(layer): {
                "shard": str(out_shards[layer]),
                "mlp_in": stats[layer][0].summary(),
                "mlp_out": stats[layer][1].summary(),
            }
            for layer in settings.layers
        },
        "seconds": progress.seconds,
        "forward_seconds": forward_seconds,
        "tokens_per_second": n_tokens / progress.seconds,
    }
    write_json(out_manifest, manifest)
    log.info("cached %d tokens x %d layers in %.1fs (%.0f tokens/s; forward alone %.1fs)",
             n_tokens, len(settings.layers), progress.seconds, manifest["tokens_per_second"], forward_seconds)
    return manifest


class _ShardWriters:
    """One streaming ParquetWriter per layer, buffering one row group at a time."""

    def __init__(self, paths: dict[int, str], schema: pa.Schema, row_group_tokens: int):
        self.paths, self.schema, self.row_group_tokens = paths, schema, row_group_tokens
        self.buffers: dict[int, list] = {layer: [] for layer in paths}
        self.sizes = dict.fromkeys(paths, 0)

    def __enter__(self):
        self._contexts = {layer: atomic_path(path) for layer, path in self.paths.items()}
        self.writers = {}
        for layer, context in self._contexts.items():
            tmp = context.__enter__()
            self.writers[layer] = pq.ParquetWriter(
                tmp, self.schema, compression="none", use_dictionary=False, write_statistics=False)
        return self

    def append(self, layer: int, meta: dict, x: np.ndarray, y: np.ndarray) -> None:
        self.buffers[layer].append(pa.record_batch(
            [pa.array(meta["seq"]), pa.array(meta["pos"]), pa.array(meta["doc"]), pa.array(meta["token"]),
             vectors_to_arrow(x), vectors_to_arrow(y)], schema=self.schema))
        self.sizes[layer] += len(x)
        if self.sizes[layer] >= self.row_group_tokens:
            self._flush(layer)

    def _flush(self, layer: int) -> None:
        if self.buffers[layer]:
            self.writers[layer].write_table(pa.Table.from_batches(self.buffers[layer]),
                                            row_group_size=self.sizes[layer])
            self.buffers[layer], self.sizes[layer] = [], 0

    def __exit__(self, exc_type, exc, tb):
        for layer, writer in self.writers.items():
            if exc_type is None:
                self._flush(layer)
            writer.close()
        for context in self._contexts.values():
            context.__exit__(exc_type, exc, tb)  # renames on success, deletes on failure
        return False


class ActivationShard:
    """Streaming reader of one layer's shard; every failure names the shard file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ActivationShardError(f"activation shard {self.path} does not exist")
        try:
            self.file = pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as error:
            raise ActivationShardError(
                f"activation shard {self.path} is truncated or corrupt: {error}") from error
        field = self.file.schema_arrow.field("mlp_in")
        meta = field.metadata or {}
        try:
            self.dtype = meta[b"dtype"].decode()
            self.d_model = int(meta[b"d_model"])
        except KeyError as error:
            raise ActivationShardError(f"activation shard {self.path} lacks dtype/d_model metadata") from error
        self.n_rows = self.file.metadata.num_rows
        self.row_group_sizes = [self.file.metadata.row_group(i).num_rows
                                for i in range(self.file.metadata.num_row_groups)]

    def read_row_group(self, index: int, columns=VECTOR_COLUMNS) -> dict[str, np.ndarray]:
        try:
            table = self.file.read_row_group(index, columns=list(columns))
        except (pa.ArrowException, OSError) as error:
            raise ActivationShardError(
                f"activation shard {self.path}: row group {index} is unreadable ({error})") from error
        out = {}
        for name in columns:
            if name in VECTOR_COLUMNS:
                out[name] = arrow_to_vectors(table.column(name), self.dtype, self.d_model)
            else:
                out[name] = table.column(name).to_numpy()
        return out
