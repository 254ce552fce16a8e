"""Rule download_transcoder_set: the published set of transcoder.source, snapshotted into resources/."""
from circuitflow.logs import start_job

settings = start_job(snakemake, uses_torch=False)

from circuitflow.transcoders.imported import download_transcoder_set

download_transcoder_set(source_uri=settings.source, out_receipt=snakemake.output.receipt)
