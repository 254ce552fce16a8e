"""Rule assemble_graphs: every prompt's graph (and its features' examples) into results/graphs."""
from circuitflow.logs import start_job

start_job(snakemake, uses_torch=False)

from circuitflow.attribution import assemble_graphs

assemble_graphs(slugs=snakemake.params.slugs, graphs=snakemake.input.graphs, metadata=snakemake.input.metadata,
                scores=snakemake.input.scores, feature_dir=snakemake.input.features, out_dir=snakemake.output[0],
                explanations=snakemake.input.explanations, classifications=snakemake.input.classifications,
                feature_scores=snakemake.input.feature_scores)
