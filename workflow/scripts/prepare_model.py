"""Rule prepare_model: materialize model.source into a plain safetensors folder."""
from circuitflow.logs import start_job

settings = start_job(snakemake)

from circuitflow.model import prepare_model

prepare_model(out_dir=snakemake.output[0], settings=settings)
