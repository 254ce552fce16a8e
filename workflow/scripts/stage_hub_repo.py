"""Rule stage_hub_repo: the run laid out as the Hugging Face repo circuit-tracer loads."""
from circuitflow.logs import start_job

settings = start_job(snakemake, uses_torch=False)

from circuitflow.hub import stage_hub_repo

inputs = snakemake.input
stage_hub_repo(transcoder_set=inputs.transcoders, weights=inputs.weights, architectures=inputs.architectures,
               training_metrics=inputs.training_metrics, fidelity=inputs.get("fidelity"),
               fidelity_table=inputs.get("fidelity_table"), packed=inputs.packed,
               feature_metadata=inputs.feature_metadata, dataset_summary=inputs.dataset,
               out_dir=snakemake.output[0], settings=settings, graphs=inputs.get("graphs"),
               interp=inputs.get("interp", []))
