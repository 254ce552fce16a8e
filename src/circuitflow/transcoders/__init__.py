"""Transcoders: the single-layer module and file format (`single_layer`, rule train_transcoders in
`training`), the cross-layer transcoder (`cross_layer`, rule train_cross_layer_transcoder in
`cross_layer_training`), both trained by one loop (`trainer`, on `batches`), sets (rule
write_transcoder_set), published sets imported instead of trained (`imported`, rules
download_transcoder_set and import_transcoder_set), a set of either kind as one replacement
(`replacement`), fidelity (rule evaluate_transcoders) and the circuit-tracer adapter.

Names are imported on first use (PEP 562): the workflow reads `imported` and `sets` when it is
parsed, and parsing must not pay for importing torch.
"""

import importlib

_WHERE = {
    "load_transcoder_set": "circuit_tracer", "to_circuit_tracer": "circuit_tracer",
    "CrossLayerTranscoder": "cross_layer", "load_cross_layer_transcoder": "cross_layer",
    "train_cross_layer_transcoder": "cross_layer_training",
    "evaluate_transcoders": "fidelity",
    "TranscoderSetConfig": "sets", "TranscoderSetError": "sets", "read_transcoder_set": "sets",
    "write_transcoder_set": "sets",
    "ReluTopK": "single_layer", "Transcoder": "single_layer", "TranscoderFileError": "single_layer",
    "architecture_path": "single_layer", "load_transcoder": "single_layer", "save_transcoder": "single_layer",
    "train_transcoder": "training", "train_transcoders": "training",
    "download_transcoder_set": "imported", "import_transcoder_set": "imported",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
