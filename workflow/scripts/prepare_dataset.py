"""Rule prepare_dataset: read, split and tokenize the corpus into fixed-length windows."""
from circuitflow.logs import start_job

start_job(snakemake.log[0], snakemake.threads)

from circuitflow.dataset import DatasetSettings, prepare_dataset

settings = DatasetSettings(**snakemake.params.dataset, seed=snakemake.params.seed)
prepare_dataset(settings, snakemake.input.model, snakemake.output.train,
                snakemake.output.validation, snakemake.output.summary)
