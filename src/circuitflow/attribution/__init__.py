"""Attribution: circuit-tracer graphs per prompt (rule attribute_prompt), the fixes applied to
circuit-tracer, and the graph folder the viewer serves (rule assemble_graphs)."""

from circuitflow.attribution.attribute import attribute_prompt, load_replacement_model
from circuitflow.attribution.graphs import assemble_graphs, assemble_hub_graphs

__all__ = ["assemble_graphs", "assemble_hub_graphs", "attribute_prompt", "load_replacement_model"]
