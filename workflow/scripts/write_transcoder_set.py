"""Rule write_transcoder_set: the transcoder set's circuit-tracer config.yaml."""
from circuitflow.logs import start_job

start_job(snakemake.log[0], snakemake.threads)

from circuitflow.transcoder import write_transcoder_set_config

weights = dict(zip(snakemake.params.layers, snakemake.input.weights))
write_transcoder_set_config(weights, snakemake.output.config, snakemake.input.model, snakemake.params.scan)
