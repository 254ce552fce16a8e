"""circuitflow: from a Hugging Face causal LM to transcoders and circuit-tracer attribution graphs.

One module per pipeline stage; each Snakemake rule's script calls one function here.
"""

__version__ = "0.1.0"
