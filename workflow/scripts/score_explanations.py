"""Rule score_explanations: detection and fuzzing scores of the LLM and non-LLM explanations."""
from circuitflow.logs import start_job

settings = start_job(snakemake)

from circuitflow.interp import score_explanations

transcoders = snakemake.input.transcoders
score_explanations(selection=snakemake.input.selection, explanations=snakemake.input.explanations,
                   feature_dir=snakemake.input.features, validation=snakemake.input.validation,
                   model_dir=snakemake.input.model, transcoder_set=transcoders[0] if transcoders else None,
                   out_scores=snakemake.output.scores, out_usage=snakemake.output.usage,
                   cache_path=snakemake.params.cache, server_log=snakemake.log.judge,
                   unit=snakemake.wildcards.unit, settings=settings)
