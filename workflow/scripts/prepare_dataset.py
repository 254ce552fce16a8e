"""Rule prepare_dataset: read, split and tokenize the corpus into fixed-length windows."""
from circuitflow.logs import start_job

settings = start_job(snakemake)

from circuitflow.data import prepare_dataset

prepare_dataset(snakemake.input.model, snakemake.output.train, snakemake.output.validation,
                snakemake.output.summary, settings)
