"""Rule assemble_hub_graphs: the assembled graphs with scan set to the hub repo, for sharing."""
from circuitflow.logs import start_job

settings = start_job(snakemake, uses_torch=False)

from circuitflow.attribution import assemble_hub_graphs

assemble_hub_graphs(graph_dir=snakemake.input.graphs, out_dir=snakemake.output[0], scan=settings.scan)
