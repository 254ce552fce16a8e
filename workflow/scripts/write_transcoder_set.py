"""Rule write_transcoder_set: the transcoder set's config.yaml, checked against the model."""
from circuitflow.logs import start_job

settings = start_job(snakemake)

from circuitflow.transcoders import write_transcoder_set

write_transcoder_set(snakemake.input.model, snakemake.input.weights, snakemake.output.config, settings)
