"""Rule pack_features: circuit-tracer's packed binary of the feature files."""
from circuitflow.logs import start_job

start_job(snakemake, uses_torch=False)

from circuitflow.features import pack_features

pack_features(snakemake.input.features, snakemake.input.transcoders, snakemake.output[0])
