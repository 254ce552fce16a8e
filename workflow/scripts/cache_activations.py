"""Rule cache_activations: stream every layer's MLP input/output to parquet shards."""
from circuitflow.logs import start_job

settings = start_job(snakemake)

from circuitflow.activations import cache_activations

cache_activations(model_dir=snakemake.input.model, train_split=snakemake.input.train,
                  out_shards=snakemake.output.shards, out_manifest=snakemake.output.manifest, settings=settings)
