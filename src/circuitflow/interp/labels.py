"""What a graph node shows: a label (circuit-tracer's `clerp`), and the label's evidence in the
feature's JSON.

Every feature has a token label (its top activating tokens and top logits, no LLM:
circuitflow.interp.token_label). A feature's LLM explanation replaces it on the node only
when it earned it: on the feature's held-out snippets, the LLM explanation's detection
balanced accuracy must be strictly higher than the token label's on the very same snippets
(a paired comparison: same positives, same negatives, same judge) and above chance (0.5).

- Ties go to the token label: it is transparent and costs nothing.
- No score (the feature was not scored, or scoring failed) means no evidence: token label.
- Small samples are not tested for significance. With the default 4 positives and 4
  negatives one snippet moves balanced accuracy by 0.125, and no paired test reaches 5 %
  on 8 snippets unless nearly all disagree; the rule is a filter against labels that do
  worse than or no better than the token label, not a proof that a shown label is good. The
  feature file keeps both scores and the rule's verdict so a reader can judge for themselves.

Graph features the judge did not see still get evidence for their token label: its
embedding score (no chat model) on held-out snippets, from score_explanations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from circuitflow.interp.token_label import token_label_fields
from circuitflow.io import read_json

# what assemble_graphs adds to a feature's JSON (the rest is collect_features' output, unchanged)
LABEL_FIELDS = ("explanation", "explanation_source", "label_rule", "llm_explanation", "llm_detection_score",
                "token_label", "token_label_detection_score", "token_label_output_centric", "category",
                "category_confidence", "detection_score", "fuzzing_score", "embedding_score")
CHANCE = 0.5


def detection_score(scored: dict, source: str) -> float | None:
    return scored.get(source, {}).get("detection", {}).get("balanced_accuracy")


def label_choice(llm_description: str | None, scored: dict) -> tuple[str, str]:
    """("llm" or "trivial", the reason) for one feature, from its per-source scores."""
    if not llm_description:
        return "trivial", "no usable LLM explanation"
    llm_score, token_score = detection_score(scored, "llm"), detection_score(scored, "trivial")
    if llm_score is None or token_score is None:
        return "trivial", "LLM explanation not scored against the token label"
    comparison = f"detection {llm_score:.3f} vs token label {token_score:.3f} on the same snippets"
    if llm_score > token_score and llm_score > CHANCE:
        return "llm", f"LLM explanation beat the token label: {comparison}"
    return "trivial", f"LLM explanation did not beat the token label: {comparison}"


@dataclass
class FeatureLabels:
    explanations: dict[int, dict]
    classifications: dict[int, dict]
    scores: dict[int, dict]
    graph_token_labels: dict[int, dict]  # embedding scores of token labels the judge did not score

    @classmethod
    def load(cls, explanations: str | Path | None, classifications: str | Path | None,
             scores: str | Path | None) -> FeatureLabels:
        def by_id(records):
            return {int(r["cantor_id"]): r for r in records}

        scored = read_json(scores) if scores else {}
        return cls(by_id(read_json(explanations)["features"]) if explanations else {},
                   by_id(read_json(classifications)["features"]) if classifications else {},
                   by_id(scored.get("features", [])),
                   by_id(scored.get("graph_token_labels", {}).get("features", [])))

    def fields(self, cantor_id: int, feature: dict) -> dict:
        """The fields added to a feature's JSON (and its node's label)."""
        token = token_label_fields(feature)
        description = self.explanations.get(cantor_id, {}).get("description")
        scored = (self.scores.get(cantor_id) or self.graph_token_labels.get(cantor_id) or {}).get("scores", {})
        source, reason = label_choice(description, scored)
        fields = {"explanation": description if source == "llm" else token["label"], "explanation_source": source,
                  "label_rule": reason, "token_label": token["label"],
                  "token_label_output_centric": token["output_centric"]}
        if description:
            fields["llm_explanation"] = description
            fields["llm_detection_score"] = detection_score(scored, "llm")
        if detection_score(scored, "trivial") is not None:
            fields["token_label_detection_score"] = detection_score(scored, "trivial")
        classified = self.classifications.get(cantor_id)
        if classified is not None:
            fields["category"] = classified["category"]
            fields["category_confidence"] = classified["confidence"]
        shown = scored.get(source)
        if shown is not None:
            if "detection" in shown:
                fields["detection_score"] = shown["detection"]["balanced_accuracy"]
            if "fuzzing" in shown:
                fields["fuzzing_score"] = shown["fuzzing"]["balanced_accuracy"]
            if "embedding" in shown:
                fields["embedding_score"] = shown["embedding"]["auroc"]
        return fields


def node_label(fields: dict) -> str:
    """The `clerp`: the label, with its detection score, or else its embedding score, when it has one."""
    if fields.get("detection_score") is not None:
        return f"{fields['explanation']} [detection {fields['detection_score']:.2f}]"
    if fields.get("embedding_score") is not None:
        return f"{fields['explanation']} [embedding {fields['embedding_score']:.2f}]"
    return fields["explanation"]
