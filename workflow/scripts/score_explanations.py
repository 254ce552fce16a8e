"""Rule score_explanations: detection and fuzzing scores of the LLM and non-LLM explanations."""
from circuitflow.logs import start_job

settings = start_job(snakemake)

from circuitflow.interp import score_explanations

transcoders = snakemake.input.transcoders
score_explanations(snakemake.input.selection, snakemake.input.explanations, snakemake.input.features,
                   snakemake.input.validation, snakemake.input.model, transcoders[0] if transcoders else None,
                   snakemake.output.scores, snakemake.output.usage, snakemake.params.cache, snakemake.log.judge,
                   snakemake.wildcards.kind, settings)
