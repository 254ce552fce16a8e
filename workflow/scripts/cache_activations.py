"""Rule cache_activations: stream every layer's MLP input/output to parquet shards."""
from circuitflow.logs import start_job

settings = start_job(snakemake)

from circuitflow.activations import cache_activations

cache_activations(snakemake.input.model, snakemake.input.train, snakemake.output.shards, snakemake.output.manifest,
                  settings)
