"""Rule collect_neurons: the same examples for a seeded sample of MLP neurons (baseline)."""
from circuitflow.logs import start_job

settings = start_job(snakemake)

from circuitflow.features import collect_neurons

collect_neurons(snakemake.input.model, snakemake.input.validation, snakemake.output.features,
                snakemake.output.metadata, settings)
