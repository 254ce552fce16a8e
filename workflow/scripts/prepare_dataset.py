"""Rule prepare_dataset: read, split and tokenize the corpus into fixed-length windows."""
from circuitflow.logs import start_job

settings = start_job(snakemake)

from circuitflow.data import prepare_dataset

prepare_dataset(model_dir=snakemake.input.model, out_train=snakemake.output.train,
                out_validation=snakemake.output.validation, out_summary=snakemake.output.summary, settings=settings)
