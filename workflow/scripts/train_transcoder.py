"""Rule train_transcoder: train one layer's transcoder from its activation shard."""
from circuitflow.logs import start_job

settings = start_job(snakemake)

from circuitflow.transcoders import train_transcoder

train_transcoder(snakemake.input.shard, int(snakemake.wildcards.layer), snakemake.output.weights,
                 snakemake.output.architecture, snakemake.output.metrics, settings)
