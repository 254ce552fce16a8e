"""Rule train_cross_layer_transcoder: one cross-layer transcoder from every layer's activation shard."""
from circuitflow.logs import start_job

settings = start_job(snakemake)

from pathlib import Path

from circuitflow.transcoders import train_cross_layer_transcoder

train_cross_layer_transcoder(shard_paths=snakemake.input.shards,
                             out_dir=Path(snakemake.output.architecture).parent,
                             out_metrics=snakemake.output.metrics, settings=settings)
