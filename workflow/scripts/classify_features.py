"""Rule classify_features: the LLM judge sorts the selected features into categories."""
from circuitflow.logs import start_job

settings = start_job(snakemake, uses_torch=False)

from circuitflow.interp import classify_features

classify_features(snakemake.input.selection, snakemake.input.features, snakemake.output.classifications,
                  snakemake.output.usage, snakemake.params.cache, snakemake.log.judge, settings)
