"""The LLM judge's stages: select_features, classify_features, explain_features,
score_explanations and compare_explanations, plus the labels graphs carry (labels)."""

from circuitflow.interp.classify import classify_features
from circuitflow.interp.explain import explain_features
from circuitflow.interp.report import compare_explanations
from circuitflow.interp.score import score_explanations
from circuitflow.interp.selection import select_features

__all__ = ["classify_features", "compare_explanations", "explain_features", "score_explanations",
           "select_features"]
