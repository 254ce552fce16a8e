"""Rule select_features: the features (or neurons) the LLM judge works on."""
from circuitflow.logs import start_job

settings = start_job(snakemake, uses_torch=False)

from circuitflow.interp import select_features

select_features(feature_dir=snakemake.input.features, metadata=snakemake.input.metadata,
                graphs=list(snakemake.input.graphs), out_selection=snakemake.output[0], settings=settings)
