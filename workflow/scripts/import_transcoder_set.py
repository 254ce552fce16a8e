"""Rule import_transcoder_set: the run's set config for a published set, checked against the model."""
from circuitflow.logs import start_job

settings = start_job(snakemake, uses_torch=False)

from circuitflow.transcoders.imported import import_transcoder_set

import_transcoder_set(model_dir=snakemake.input.model, out_config=snakemake.output.config, settings=settings,
                      receipt=snakemake.input.get("receipt"))
