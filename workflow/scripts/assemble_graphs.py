"""Rule assemble_graphs: every prompt's graph (and its features' examples) into results/graphs."""
from circuitflow.logs import start_job

start_job(snakemake, uses_torch=False)

from circuitflow.attribution import assemble_graphs

slugs = snakemake.params.slugs
assemble_graphs(dict(zip(slugs, snakemake.input.graphs)), dict(zip(slugs, snakemake.input.metadata)),
                dict(zip(slugs, snakemake.input.scores)), snakemake.input.features, snakemake.output[0])
