"""The model: its source, its facts, materializing it (rule prepare_model), loading and hooks.

Importing this package does not import torch (the workflow reads model facts at parse time).
"""

from circuitflow.model.facts import ModelFacts, ModelSourceError, model_facts, read_model_facts
from circuitflow.model.loading import load_model, load_tokenizer
from circuitflow.model.materialize import prepare_model
from circuitflow.model.source import ModelSource, resolve_source, source_facts

__all__ = ["ModelFacts", "ModelSource", "ModelSourceError", "load_model", "load_tokenizer", "model_facts",
           "prepare_model", "read_model_facts", "resolve_source", "source_facts"]
