"""circuitflow: from a Hugging Face causal LM to transcoders and circuit-tracer attribution graphs.

One package per concern (model, data, activations, transcoders, features, attribution,
viewer); each Snakemake rule's script calls the function of the same name in one of them,
with the settings that `circuitflow.config` builds from the schema-validated config.
"""

__version__ = "0.1.0"
