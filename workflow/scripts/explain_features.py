"""Rule explain_features: one LLM explanation per selected feature."""
from circuitflow.logs import start_job

settings = start_job(snakemake, uses_torch=False)

from circuitflow.interp import explain_features

explain_features(snakemake.input.selection, snakemake.input.features, snakemake.output.explanations,
                 snakemake.output.usage, snakemake.params.cache, snakemake.log.judge, settings)
