"""Rule write_transcoder_set: the transcoder set's config.yaml, checked against the model (plt:
each layer's files linked into place from its training job's folder first)."""
from circuitflow.logs import start_job

settings = start_job(snakemake)

from circuitflow.transcoders import write_transcoder_set

trained, placed = snakemake.input.trained, snakemake.output
write_transcoder_set(model_dir=snakemake.input.model, weights=placed.weights or trained,
                     training_dirs=trained if placed.weights else (), architectures=placed.architectures,
                     metrics=placed.metrics, out_config=placed.config, settings=settings)
