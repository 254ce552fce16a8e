"""Rule evaluate_transcoders: fidelity of every transcoder on held-out validation windows."""
from circuitflow.logs import start_job

settings = start_job(snakemake)

from circuitflow.transcoders import evaluate_transcoders

evaluate_transcoders(snakemake.input.model, snakemake.input.transcoders, snakemake.input.validation,
                     snakemake.output.fidelity, snakemake.output.table, settings)
