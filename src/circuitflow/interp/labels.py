"""What a graph node shows: the feature's explanation as its label (circuit-tracer's `clerp`),
and explanation, category and scores in its per-feature JSON.

The LLM explanation is used where explain_features wrote one; every other feature gets the
non-LLM explanation (its top activating tokens and top logits), so no node is left unlabelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from circuitflow.interp.examples import trivial_explanation
from circuitflow.io import read_json


# what assemble_graphs adds to a feature's JSON (the rest is collect_features' output, unchanged)
LABEL_FIELDS = ("explanation", "explanation_source", "category", "category_confidence", "detection_score",
                "fuzzing_score")


@dataclass
class FeatureLabels:
    explanations: dict[int, dict]
    classifications: dict[int, dict]
    scores: dict[int, dict]

    @classmethod
    def load(cls, explanations: str | Path | None, classifications: str | Path | None,
             scores: str | Path | None) -> FeatureLabels:
        def by_id(path):
            return {int(r["cantor_id"]): r for r in read_json(path)["features"]} if path else {}

        return cls(by_id(explanations), by_id(classifications), by_id(scores))

    def fields(self, cantor_id: int, feature: dict) -> dict:
        """The fields added to a feature's JSON (and its node's label)."""
        explained = self.explanations.get(cantor_id, {})
        if explained.get("description"):
            explanation, source = explained["description"], "llm"
        else:
            explanation, source = trivial_explanation(feature), "trivial"
        fields = {"explanation": explanation, "explanation_source": source}
        classified = self.classifications.get(cantor_id)
        if classified is not None:
            fields["category"] = classified["category"]
            fields["category_confidence"] = classified["confidence"]
        scored = self.scores.get(cantor_id, {}).get("scores", {}).get(source)
        if scored is not None:
            fields["detection_score"] = scored["detection"]["balanced_accuracy"]
            if "fuzzing" in scored:
                fields["fuzzing_score"] = scored["fuzzing"]["balanced_accuracy"]
        return fields


def node_label(fields: dict) -> str:
    """The `clerp`: the explanation, with the detection score when there is one."""
    score = fields.get("detection_score")
    return fields["explanation"] + (f" [detection {score:.2f}]" if score is not None else "")
