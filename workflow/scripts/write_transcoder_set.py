"""Rule write_transcoder_set: the transcoder set's config.yaml, checked against the model (plt:
each layer's files linked into place from its training job's folder first)."""
from circuitflow.logs import start_job

settings = start_job(snakemake)

from circuitflow.transcoders import write_transcoder_set

write_transcoder_set(model_dir=snakemake.input.model, trained=snakemake.input.trained,
                     weights=snakemake.output.weights, architectures=snakemake.output.architectures,
                     metrics=snakemake.output.metrics, out_config=snakemake.output.config, settings=settings)
