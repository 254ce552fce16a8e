"""Rule graphs: assemble every prompt's graph (and its features' examples) into results/graphs."""
from circuitflow.logs import setup_logging

setup_logging(snakemake.log[0])

from circuitflow.graphs import assemble_graphs

slugs = snakemake.params.slugs
assemble_graphs(dict(zip(slugs, snakemake.input.graphs)), dict(zip(slugs, snakemake.input.metadata)),
                dict(zip(slugs, snakemake.input.scores)), snakemake.output[0], snakemake.input.features)
