"""Rule train_transcoders: train the transcoders of a group of layers, one after another."""
from circuitflow.logs import start_job

settings = start_job(snakemake)

from circuitflow.transcoders import train_transcoders

train_transcoders(shard_paths=snakemake.input.shards, layers=snakemake.params.layers, out_dir=snakemake.output[0],
                  checkpoint_dir=snakemake.params.checkpoints, settings=settings)
