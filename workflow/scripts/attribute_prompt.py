"""Rule attribute_prompt: one circuit-tracer attribution graph for one prompt."""
from circuitflow.logs import start_job

settings = start_job(snakemake)

from circuitflow.attribution import attribute_prompt

attribute_prompt(prompt=snakemake.params.prompt, model_dir=snakemake.input.model,
                 transcoder_set=snakemake.input.transcoders, out_graph=snakemake.output.graph,
                 out_metadata=snakemake.output.metadata, out_scores=snakemake.output.scores, settings=settings)
