"""Rule collect_features: activating examples of every live transcoder feature."""
from circuitflow.logs import start_job

settings = start_job(snakemake)

from circuitflow.features import collect_features

collect_features(model_dir=snakemake.input.model, transcoder_set=snakemake.input.transcoders,
                 validation_split=snakemake.input.validation, out_dir=snakemake.output.features,
                 out_metadata=snakemake.output.metadata, settings=settings)
