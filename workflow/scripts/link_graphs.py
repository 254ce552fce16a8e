"""Rule link_graphs: results/graphs/, links into the run's graph folder (the README's target)."""
from circuitflow.logs import start_job

start_job(snakemake, uses_torch=False)

from circuitflow.attribution.link import link_graphs

link_graphs(graphs=snakemake.input.graphs, link=snakemake.output[0])
