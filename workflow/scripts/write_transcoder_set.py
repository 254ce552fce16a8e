"""Rule write_transcoder_set: the transcoder set's config.yaml, checked against the model."""
from circuitflow.logs import start_job

settings = start_job(snakemake)

from circuitflow.transcoders import write_transcoder_set

write_transcoder_set(model_dir=snakemake.input.model, weights=snakemake.input.weights,
                     out_config=snakemake.output.config, settings=settings)
