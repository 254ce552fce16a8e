"""Rule collect_features: activating examples of every live transcoder feature."""
from circuitflow.logs import pick_device, start_job

start_job(snakemake.log[0], snakemake.threads)

from circuitflow.features import CollectSettings, collect_features

settings = CollectSettings(**{**snakemake.params.settings, "layers": tuple(snakemake.params.settings["layers"])},
                           device=pick_device(snakemake.params.device))
collect_features(snakemake.input.model, snakemake.input.transcoders, snakemake.input.validation, settings,
                 snakemake.output.features, snakemake.output.metadata, snakemake.params.transcoder_id)
