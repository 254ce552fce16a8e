"""Transcoders: the single-layer module and file format, training (rule train_transcoder), sets
(rule write_transcoder_set), fidelity (rule evaluate_transcoders) and the circuit-tracer adapter. A cross-layer transcoder gets its own
module beside `single_layer`."""

from circuitflow.transcoders.circuit_tracer import load_transcoder_set, to_circuit_tracer
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

__all__ = ["ReluTopK", "Transcoder", "TranscoderFileError", "TranscoderSetConfig", "TranscoderSetError",
           "architecture_path", "evaluate_transcoders", "load_transcoder", "load_transcoder_set", "read_transcoder_set",
           "save_transcoder", "to_circuit_tracer", "train_transcoder", "write_transcoder_set"]
