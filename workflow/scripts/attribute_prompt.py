"""Rule attribute_prompt: one circuit-tracer attribution graph for one prompt."""
from circuitflow.logs import start_job

settings = start_job(snakemake)

from circuitflow.attribution import attribute_prompt

attribute_prompt(snakemake.params.prompt, snakemake.input.model, snakemake.input.transcoders,
                 snakemake.output.graph, snakemake.output.metadata, snakemake.output.scores, settings)
