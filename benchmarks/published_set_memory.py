"""Computed memory of the published sets circuit-tracer lists, as circuitflow loads them (float32).

Nothing is downloaded: each set's shapes (layers, d_model, features per layer, skip connection,
per-layer or cross-layer) are written below from their published configs and file headers, and
the same estimate that refuses a set before loading (`estimate_memory_mb`) turns them into MiB
for the three lazy settings. Figures are computed, not measured.

    python benchmarks/published_set_memory.py
"""

from __future__ import annotations

from circuitflow.transcoders.imported import estimate_memory_mb

# set, model, layers, d_model, features per layer, cross-layer?, skip?, .npz (read whole), note
SETS = [
    ("mntss/gemma-scope-transcoders", "google/gemma-2-2b", 26, 2304, 16384, False, False, True, "JumpReLU"),
    ("mntss/clt-gemma-2-2b-426k", "google/gemma-2-2b", 26, 2304, 16384, True, False, False, "JumpReLU"),
    ("mntss/clt-gemma-2-2b-2.5M", "google/gemma-2-2b", 26, 2304, 98304, True, False, False,
     "width inferred from 2.5M / 26"),
    ("mntss/transcoder-Llama-3.2-1B", "meta-llama/Llama-3.2-1B", 16, 2048, 131072, False, True, False, "ReLU + skip"),
    ("mntss/clt-llama-3.2-1b-524k", "meta-llama/Llama-3.2-1B", 16, 2048, 32768, True, False, False, "JumpReLU"),
    ("mwhanna/qwen3-0.6b-transcoders-lowl0", "Qwen/Qwen3-0.6B", 28, 1024, 163840, False, False, False, "ReLU"),
    ("mwhanna/qwen3-4b-transcoders", "Qwen/Qwen3-4B", 36, 2560, 163840, False, False, False, "ReLU"),
    ("facebook/crv-8b-instruct-transcoders", "meta-llama/Llama-3.1-8B-Instruct", 32, 4096, 131072, False, False, False,
     "TopK k=128; width inferred from the repo size"),
]


def tensor_bytes(layers: int, d_model: int, features: int, cross_layer: bool, skip: bool, npz: bool) -> dict:
    """Bytes at float32 by part, as `read_published_set` sums them from file headers."""
    encoder = 4 * features * d_model
    decoders = [4 * features * d_model * ((layers - i) if cross_layer else 1) for i in range(layers)]
    other = layers * 4 * (2 * features + d_model + (d_model * d_model if skip else 0))
    return {"encoders": layers * encoder, "decoders": sum(decoders), "other": other,
            "largest_decoder": max(decoders), "eager_only": int(npz)}


def main() -> None:
    print("| set | model | layers × features (d_model) | eager | lazy decoder (default) | lazy encoder + decoder | note |")
    print("|---|---|---|---:|---:|---:|---|")
    for name, model, layers, d_model, features, cross, skip, npz, note in SETS:
        sizes = tensor_bytes(layers, d_model, features, cross, skip, npz)
        figures = [estimate_memory_mb(sizes, lazy_encoder, lazy_decoder)["total"] / 1024
                   for lazy_encoder, lazy_decoder in ((False, False), (False, True), (True, True))]
        kind = "CLT" if cross else "PLT"
        print(f"| `{name}` ({kind}) | {model} | {layers} × {features:,} ({d_model}) | "
              + " | ".join(f"{gib:,.1f} GiB" for gib in figures)
              + f" | {note}{'; .npz files are read whole' if npz else ''} |")


if __name__ == "__main__":
    main()
