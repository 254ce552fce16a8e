"""Rule select_features: the features (or neurons) the LLM judge works on."""
from circuitflow.logs import start_job

settings = start_job(snakemake, uses_torch=False)

from circuitflow.interp import select_features

select_features(snakemake.input.features, snakemake.input.metadata, list(snakemake.input.graphs),
                snakemake.output[0], settings)
