"""Rule prepare_model: materialize model.source into a plain safetensors folder."""
from circuitflow.logs import start_job

start_job(snakemake.log[0], snakemake.threads)

from circuitflow.model import materialize_model

model = snakemake.params.model
materialize_model(model["source"], snakemake.output[0], model["dtype"], model.get("revision"))
