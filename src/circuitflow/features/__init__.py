"""Features: streaming statistics, feature sources, rendering, collection (rules collect_features
and collect_neurons), ids and packing (rule pack_features)."""

from circuitflow.features.collect import collect_features, collect_neurons
from circuitflow.features.ids import cantor, cantor_unpair
from circuitflow.features.pack import PackError, pack_feature_folder, pack_features, read_packed_feature
from circuitflow.features.sources import FeatureRequestError

__all__ = ["FeatureRequestError", "PackError", "cantor", "cantor_unpair", "collect_features", "collect_neurons",
           "pack_feature_folder", "pack_features", "read_packed_feature"]
