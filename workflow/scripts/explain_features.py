"""Rule explain_features: one LLM explanation per selected feature."""
from circuitflow.logs import start_job

settings = start_job(snakemake, uses_torch=False)

from circuitflow.interp import explain_features

explain_features(selection=snakemake.input.selection, feature_dir=snakemake.input.features,
                 out_explanations=snakemake.output.explanations, out_usage=snakemake.output.usage,
                 cache_path=snakemake.params.cache, server_log=snakemake.log.judge, settings=settings)
