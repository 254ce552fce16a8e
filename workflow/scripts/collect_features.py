"""Rule collect_features: activating examples of every live transcoder feature."""
from circuitflow.logs import start_job

settings = start_job(snakemake)

from circuitflow.features import collect_features

collect_features(snakemake.input.model, snakemake.input.transcoders, snakemake.input.validation,
                 snakemake.output.features, snakemake.output.metadata, settings)
