"""Rule compare_explanations: transcoder features vs MLP neurons vs the non-LLM explanation."""
from circuitflow.logs import start_job

start_job(snakemake, uses_torch=False)

from circuitflow.interp import compare_explanations

compare_explanations(units=snakemake.params.units, scores=snakemake.input.scores,
                     classifications=snakemake.input.classifications, out_summary=snakemake.output.summary,
                     out_table=snakemake.output.table)
