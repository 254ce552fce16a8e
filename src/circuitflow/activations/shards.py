"""Activation shards: one parquet file per layer of MLP inputs/outputs, written and read here.

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
``dtype`` and ``d_model``. Every data page carries a CRC-32 (parquet's page checksum), which
`ActivationShard` verifies the first time it reads each row group, and the file's key-value metadata says so
(``circuitflow.page_checksums: crc32``): a flipped byte anywhere in a vector is an error that
names the shard, never a silently different training set. Vectors are stored as raw fixed-size binary rather than
``fixed_size_list`` because parquet encodes list levels per element, which made writing 15x
slower. `ActivationShard` reads them back as numpy arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from circuitflow.io import atomic_path

VECTOR_COLUMNS = ("mlp_in", "mlp_out")


CHECKSUM_KEY, CHECKSUM_VALUE = b"circuitflow.page_checksums", b"crc32"

# Parquet's layout as `ShardWriters` writes it, for `shard_bytes`: a page ends only after a write
# batch of rows (but the last of a column chunk), and costs a few dozen bytes of header; each column
# chunk costs about 36 bytes and 100 in the footer, which also holds the schema (1.2 KB): measured.
WRITE_BATCH_ROWS = 1024
PAGE_OVERHEAD_BYTES = 64
CHUNK_OVERHEAD_BYTES = 256
FILE_OVERHEAD_BYTES = 16 << 10


class ActivationShardError(ValueError):
    """A cached activation shard is missing, truncated or corrupt."""


def rebuild_hint(path: Path) -> str:
    # A plain rerun keeps a file that exists, so say how to make Snakemake write it again.
    return (f"rebuild it with `snakemake --cores 2 --forcerun {path}` (or delete it and rerun): "
            "all layers' shards are written by the one cache_activations job")


def activation_schema(d_model: int, dtype: str) -> pa.Schema:
    width = d_model * np.dtype(dtype).itemsize
    meta = {b"dtype": dtype.encode(), b"d_model": str(d_model).encode()}
    return pa.schema([
        ("seq", pa.int32()), ("pos", pa.int32()), ("doc", pa.int32()), ("token", pa.int32()),
        pa.field("mlp_in", pa.binary(width), metadata=meta),
        pa.field("mlp_out", pa.binary(width), metadata=meta),
    ], metadata={CHECKSUM_KEY: CHECKSUM_VALUE})


def shard_bytes(rows: int, d_model: int, dtype: str, row_group_tokens: int) -> int:
    """Upper bound of the size of one layer's shard of `rows` tokens: the vectors and the int32
    columns as they are stored (uncompressed), plus parquet's page headers, levels and footer."""
    widths = [4, 4, 4, 4] + [d_model * np.dtype(dtype).itemsize] * len(VECTOR_COLUMNS)
    row_groups = -(-rows // row_group_tokens)  # `ShardWriters` closes a row group once it holds row_group_tokens
    pages = len(widths) * (rows // WRITE_BATCH_ROWS + row_groups)
    return (rows * sum(widths) + pages * PAGE_OVERHEAD_BYTES + row_groups * len(widths) * CHUNK_OVERHEAD_BYTES
            + FILE_OVERHEAD_BYTES)


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


class ShardWriters:
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
                tmp, self.schema, compression="none", use_dictionary=False, write_statistics=False,
                write_page_checksum=True, write_batch_size=WRITE_BATCH_ROWS)
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
            self.file = pq.ParquetFile(self.path, page_checksum_verification=True)
        except (pa.ArrowException, OSError) as error:
            raise ActivationShardError(
                f"activation shard {self.path} is truncated or corrupt ({error}); {rebuild_hint(self.path)}") from None
        if (self.file.schema_arrow.metadata or {}).get(CHECKSUM_KEY) != CHECKSUM_VALUE:
            raise ActivationShardError(
                f"activation shard {self.path} has no page checksums (written by an older circuitflow), so "
                f"corruption could not be detected; {rebuild_hint(self.path)}")
        try:
            field = self.file.schema_arrow.field("mlp_in")
            meta = field.metadata or {}
            self.dtype = meta[b"dtype"].decode()
            self.d_model = int(meta[b"d_model"])
        except KeyError:
            raise ActivationShardError(
                f"activation shard {self.path} lacks its mlp_in column or dtype/d_model metadata; "
                f"{rebuild_hint(self.path)}") from None
        # Each row group's checksums are verified on its first read; training reads a shard for
        # several epochs, and re-verifying bytes this job has already checked costs ~45 % of a
        # raw read (benchmarks/shard_checks.py) for no added safety.
        self.unverified_file = pq.ParquetFile(self.path, page_checksum_verification=False)
        self.verified: set[tuple[int, str]] = set()  # (row group, column) already checked
        self.n_rows = self.file.metadata.num_rows
        self.row_group_sizes = [self.file.metadata.row_group(i).num_rows
                                for i in range(self.file.metadata.num_row_groups)]

    def read_row_group(self, index: int, columns=VECTOR_COLUMNS) -> dict[str, np.ndarray]:
        try:
            checked = all((index, name) in self.verified for name in columns)
            source = self.unverified_file if checked else self.file
            table = source.read_row_group(index, columns=list(columns))
        except (pa.ArrowException, OSError) as error:
            raise ActivationShardError(
                f"activation shard {self.path}: row group {index} is corrupt ({error}); "
                f"{rebuild_hint(self.path)}") from None
        self.verified.update((index, name) for name in columns)
        out = {}
        for name in columns:
            if name in VECTOR_COLUMNS:
                out[name] = arrow_to_vectors(table.column(name), self.dtype, self.d_model)
            else:
                out[name] = table.column(name).to_numpy()
        return out
