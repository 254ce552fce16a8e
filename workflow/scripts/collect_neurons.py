"""Rule collect_neurons: the same examples for a seeded sample of MLP neurons (baseline)."""
from circuitflow.logs import start_job

settings = start_job(snakemake)

from circuitflow.features import collect_neurons

collect_neurons(model_dir=snakemake.input.model, validation_split=snakemake.input.validation,
                out_dir=snakemake.output.features, out_metadata=snakemake.output.metadata, settings=settings)
