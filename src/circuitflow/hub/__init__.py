"""Publishing a run as a Hugging Face model repo that circuit-tracer loads and its frontend reads.

`stage_hub_repo` lays the repo out in a local folder (no network, no token): the transcoder set
with a config.yaml that points at the repo, the packed features, their metadata, the measured
figures, the shareable graphs, the interp files and a model card. `upload_to_hub` makes that
folder the repo's content in at most one commit, and none when nothing changed.
"""

from circuitflow.hub.repo import HubRepoError, stage_hub_repo
from circuitflow.hub.upload import HubError, hub_token, require_token, upload_to_hub

__all__ = ["HubError", "HubRepoError", "hub_token", "require_token", "stage_hub_repo", "upload_to_hub"]
