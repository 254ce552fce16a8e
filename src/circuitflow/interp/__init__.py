"""The LLM judge's stages: select_features, classify_features, explain_features,
score_explanations and compare_explanations (compare), plus the labels graphs carry (labels).

Each stage runs once per unit: "features" (transcoder features) or "neurons" (the MLP-neuron
baseline). The judge's prompts are in judge_prompts; feature_jobs runs one LLM job over many
features."""

from circuitflow.interp.classify import classify_features
from circuitflow.interp.compare import compare_explanations
from circuitflow.interp.explain import explain_features
from circuitflow.interp.score import score_explanations
from circuitflow.interp.selection import select_features

__all__ = ["classify_features", "compare_explanations", "explain_features", "score_explanations",
           "select_features"]
