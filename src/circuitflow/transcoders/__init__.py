"""Transcoders: the single-layer module and file format (`single_layer`, rule train_transcoder in
`training`), the cross-layer transcoder (`cross_layer`, rule train_cross_layer_transcoder in
`cross_layer_training`), sets (rule write_transcoder_set), a set of either kind as one
replacement (`replacement`), fidelity (rule evaluate_transcoders) and the circuit-tracer adapter."""

from circuitflow.transcoders.circuit_tracer import load_transcoder_set, to_circuit_tracer
from circuitflow.transcoders.cross_layer import CrossLayerTranscoder, load_cross_layer_transcoder
from circuitflow.transcoders.cross_layer_training import train_cross_layer_transcoder
from circuitflow.transcoders.fidelity import evaluate_transcoders
from circuitflow.transcoders.sets import (
    TranscoderSetConfig,
    TranscoderSetError,
    read_transcoder_set,
    write_transcoder_set,
)
from circuitflow.transcoders.single_layer import (
    ReluTopK,
    Transcoder,
    TranscoderFileError,
    architecture_path,
    load_transcoder,
    save_transcoder,
)
from circuitflow.transcoders.training import train_transcoder

__all__ = ["CrossLayerTranscoder", "load_cross_layer_transcoder", "train_cross_layer_transcoder", "ReluTopK", "Transcoder", "TranscoderFileError", "TranscoderSetConfig", "TranscoderSetError",
           "architecture_path", "evaluate_transcoders", "load_transcoder", "load_transcoder_set", "read_transcoder_set",
           "save_transcoder", "to_circuit_tracer", "train_transcoder", "write_transcoder_set"]
