"""Rule assemble_graphs: every prompt's graph (and its features' examples) into results/graphs."""
from circuitflow.logs import start_job

start_job(snakemake, uses_torch=False)

from circuitflow.attribution import assemble_graphs

assemble_graphs(snakemake.params.slugs, snakemake.input.graphs, snakemake.input.metadata, snakemake.input.scores,
                snakemake.input.features, snakemake.output[0], snakemake.input.explanations,
                snakemake.input.classifications, snakemake.input.feature_scores)
