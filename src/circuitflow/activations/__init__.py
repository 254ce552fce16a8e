"""Activations: the parquet shards of MLP inputs/outputs and the rule that caches them."""

from circuitflow.activations.cache import cache_activations
from circuitflow.activations.shards import ActivationShard, ActivationShardError, ShardWriters, activation_schema

__all__ = ["ActivationShard", "ActivationShardError", "ShardWriters", "activation_schema", "cache_activations"]
