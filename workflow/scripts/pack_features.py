"""Rule pack_features: circuit-tracer's packed binary of the feature files."""
from circuitflow.logs import start_job

start_job(snakemake, uses_torch=False)

from circuitflow.features import pack_features

pack_features(feature_dir=snakemake.input.features, transcoder_set=snakemake.input.transcoders,
              out_dir=snakemake.output[0])
