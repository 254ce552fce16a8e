"""Rule upload_to_hub: one commit of what changed in the staged repo (none if nothing did)."""
from circuitflow.logs import start_job

settings = start_job(snakemake, uses_torch=False)

from circuitflow.hub import upload_to_hub

upload_to_hub(repo_dir=snakemake.input.repo, out_receipt=snakemake.output.receipt, settings=settings)
