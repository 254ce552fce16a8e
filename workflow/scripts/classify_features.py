"""Rule classify_features: the LLM judge sorts the selected features into categories."""
from circuitflow.logs import start_job

settings = start_job(snakemake, uses_torch=False)

from circuitflow.interp import classify_features

classify_features(selection=snakemake.input.selection, feature_dir=snakemake.input.features,
                  out_classifications=snakemake.output.classifications, out_usage=snakemake.output.usage,
                  cache_path=snakemake.params.cache, server_log=snakemake.log.judge, settings=settings)
