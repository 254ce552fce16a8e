"""Fixes applied to circuit-tracer 0.5.0 before graphs are written.

- Error nodes got ids ``0_{layer}_{pos}`` that collide with layer-0 feature nodes (issue #78);
  `patch_error_node_ids` applies the upstream fix (``{layer}_-1_{pos}``).
"""

from __future__ import annotations


def patch_error_node_ids() -> None:
    """Give error nodes ids that cannot collide with feature ids (upstream fix of #78)."""
    from circuit_tracer.frontend import graph_models

    def error_node(cls, layer, pos, influence=None):
        return cls(node_id=f"{layer}_-1_{pos}", feature=-1, layer=str(layer), ctx_idx=pos,
                   feature_type="mlp reconstruction error", jsNodeId=f"{layer}_-1-{pos}",
                   influence=influence)

    graph_models.Node.error_node = classmethod(error_node)
