"""Rule evaluate_transcoders: fidelity of every transcoder on held-out validation windows."""
from circuitflow.logs import start_job

settings = start_job(snakemake)

from circuitflow.transcoders import evaluate_transcoders

evaluate_transcoders(model_dir=snakemake.input.model, transcoder_set=snakemake.input.transcoders,
                     validation_split=snakemake.input.validation, out_json=snakemake.output.fidelity,
                     out_csv=snakemake.output.table, settings=settings)
