"""Rule collect_neurons: the same examples for a seeded sample of MLP neurons (baseline)."""
from circuitflow.logs import pick_device, start_job

start_job(snakemake.log[0], snakemake.threads)

from circuitflow.features import CollectSettings, collect_neurons

settings = CollectSettings(**{**snakemake.params.settings, "layers": tuple(snakemake.params.settings["layers"])},
                           device=pick_device(snakemake.params.device))
collect_neurons(snakemake.input.model, snakemake.input.validation, settings, snakemake.output.features,
                snakemake.output.metadata, snakemake.params.transcoder_id)
