"""Rule train_transcoder: train one layer's transcoder from its activation shard."""
from circuitflow.logs import pick_device, start_job

start_job(snakemake.log[0], snakemake.threads)

from circuitflow.transcoder import TrainSettings, train_transcoder

settings = TrainSettings(**snakemake.params.transcoder, seed=snakemake.params.seed,
                         device=pick_device(snakemake.params.device))
train_transcoder(snakemake.input.shard, int(snakemake.wildcards.layer), settings,
                 snakemake.output.weights, snakemake.output.metrics)
