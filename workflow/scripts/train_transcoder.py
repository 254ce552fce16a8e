"""Rule train_transcoder: train one layer's transcoder from its activation shard."""
from circuitflow.logs import start_job

settings = start_job(snakemake)

from circuitflow.transcoders import train_transcoder

train_transcoder(shard_path=snakemake.input.shard, layer=int(snakemake.wildcards.layer),
                 out_weights=snakemake.output.weights, out_architecture=snakemake.output.architecture,
                 out_metrics=snakemake.output.metrics, settings=settings)
