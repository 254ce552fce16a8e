"""Rule attribute_prompt: one circuit-tracer attribution graph for one prompt."""
from circuitflow.logs import pick_device, start_job

start_job(snakemake.log[0], snakemake.threads)

from circuitflow.attribution import AttributionSettings, attribute_prompt_file

prompt = snakemake.params.prompt
settings = AttributionSettings(**snakemake.params.settings, device=pick_device(snakemake.params.device))
attribute_prompt_file(prompt["origin"], snakemake.wildcards.slug, snakemake.input.model,
                      snakemake.input.transcoders, settings, snakemake.output.graph,
                      snakemake.output.metadata, snakemake.output.scores, prompt["inline"])
