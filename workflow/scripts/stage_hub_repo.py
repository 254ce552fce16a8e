"""Rule stage_hub_repo: the run laid out as the Hugging Face repo circuit-tracer loads."""
from circuitflow.logs import start_job

settings = start_job(snakemake, uses_torch=False)

from circuitflow.hub import stage_hub_repo

inputs = snakemake.input
stage_hub_repo(inputs.transcoders, inputs.weights, inputs.architectures, inputs.training_metrics,
               inputs.get("fidelity"), inputs.get("fidelity_table"), inputs.packed, inputs.feature_metadata,
               inputs.dataset, snakemake.output[0], settings, graphs=inputs.get("graphs"),
               interp=inputs.get("interp", []))
