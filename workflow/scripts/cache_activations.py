"""Rule cache_activations: stream every layer's MLP input/output to parquet shards."""
from circuitflow.logs import pick_device, start_job

start_job(snakemake.log[0], snakemake.threads)

from circuitflow.activations import CacheSettings, cache_activations

layers = tuple(snakemake.params.layers)
settings = CacheSettings(
    layers=layers,
    batch_size=snakemake.params.activations["batch_size"],
    dtype=snakemake.params.activations["dtype"],
    row_group_tokens=snakemake.params.activations["row_group_tokens"],
    model_dtype=snakemake.params.model_dtype,
    device=pick_device(snakemake.params.device),
)
cache_activations(snakemake.input.model, snakemake.input.train,
                  dict(zip(layers, snakemake.output.shards)), snakemake.output.manifest, settings)
