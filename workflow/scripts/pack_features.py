"""Rule pack_features: circuit-tracer's packed binary of the feature files."""
from circuitflow.logs import setup_logging

log = setup_logging(snakemake.log[0])

from circuitflow.pack import pack_transcoder_features

summary = pack_transcoder_features(snakemake.input.features, snakemake.input.transcoders, snakemake.output[0])
log.info("packed %(n_packed)d features: %(json_bytes)d bytes of JSON -> %(packed_bytes)d bytes", summary)
