"""Rule compare_explanations: transcoder features vs MLP neurons vs the non-LLM explanation."""
from circuitflow.logs import start_job

start_job(snakemake, uses_torch=False)

from circuitflow.interp import compare_explanations

compare_explanations(snakemake.params.kinds, snakemake.input.scores, snakemake.input.classifications,
                     snakemake.output.summary, snakemake.output.table)
