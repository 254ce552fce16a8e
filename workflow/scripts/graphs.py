"""Rule graphs: assemble every prompt's graph into results/graphs for circuit-tracer's server."""
from circuitflow.logs import setup_logging

setup_logging(snakemake.log[0])

from circuitflow.graphs import assemble_graphs

slugs = snakemake.params.slugs
assemble_graphs(dict(zip(slugs, snakemake.input.graphs)), dict(zip(slugs, snakemake.input.metadata)),
                dict(zip(slugs, snakemake.input.scores)), snakemake.output[0])
