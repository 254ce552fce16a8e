"""score_explanations: how well each explanation predicts where its feature fires.

Two delphi-style scorers, done right (see negatives.py and examples.py):

- **detection**: the judge reads an explanation and one snippet and says whether the feature
  fires on it. Positives are held-out activating examples across the activation quantiles
  (never the ones the explainer saw); negatives are validation windows of the same shape on
  which the feature is verified to be zero, some of them "hard" (containing its top tokens).
- **fuzzing**: the same positives with the tokens at or above `highlight_fraction` of the
  peak highlighted (correct), against negatives with as many random tokens highlighted
  (incorrect); the judge says whether the highlighting fits the explanation. Only the LLM
  explanation is fuzzed: the non-LLM one lists the firing tokens, so it would mark itself.

Each snippet is one request whose answer is one yes/no token; with ``llm.logprobs`` the
probability P(yes)/(P(yes)+P(no)) from the top logprobs gives AUROC. Both the LLM explanation
and the trivial (non-LLM) one are scored on the same snippets. Metrics are pooled over
judgements (delphi's way) per layer and overall, with the mean of per-feature balanced
accuracies beside them.
"""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path

import numpy as np

from circuitflow.config import ScoreExplanationsSettings
from circuitflow.interp.examples import Snippet, explainer_examples, held_out_positives
from circuitflow.interp.feature_jobs import failures, judge_all
from circuitflow.interp.judge_prompts import detection_messages, fuzzing_messages
from circuitflow.interp.metrics import binary_metrics, mean
from circuitflow.interp.selection import load_selection
from circuitflow.io import read_json, write_json
from circuitflow.llm import judge_name

log = logging.getLogger("circuitflow.interp")

SOURCES = ("llm", "trivial")  # which explanation: the judge's, or the top-tokens sentence
TOP_LOGPROBS = 5


def read_answer(text: str) -> bool | None:
    words = "".join(ch if ch.isalpha() else " " for ch in text.lower()).split()
    if not words:
        return None
    return True if words[0] == "yes" else False if words[0] == "no" else None


def yes_probability(top_logprobs: dict | None) -> float | None:
    """P(yes) / (P(yes) + P(no)) over the first token's alternatives ('Yes', ' yes', ... alike)."""
    if not top_logprobs:
        return None
    mass = {True: 0.0, False: 0.0}
    for token, logprob in top_logprobs.items():
        answer = read_answer(token)
        if answer is not None and logprob is not None:
            mass[answer] += math.exp(logprob)
    total = mass[True] + mass[False]
    return mass[True] / total if total > 0 else None


def fuzzing_items(positives: list[Snippet], negatives: list[Snippet], fraction: float,
                  rng: np.random.Generator) -> list[tuple[str, bool]]:
    """Correctly highlighted positives, and negatives with as many random tokens highlighted."""
    items, counts = [], []
    for s in positives:
        marked = s.firing_positions(fraction)
        counts.append(max(1, len(marked)))
        items.append((s.highlighted(marked), True))
    for i, s in enumerate(negatives):
        candidates = [j for j, t in enumerate(s.tokens) if t.strip()] or list(range(len(s.tokens)))
        k = min(counts[i % len(counts)], len(candidates))
        items.append((s.highlighted(rng.choice(candidates, size=k, replace=False).tolist()), False))
    return items


async def judge_items(client, messages_for, description: str, items: list[tuple[str, bool]],
                      settings: ScoreExplanationsSettings) -> dict:
    """Ask about every (text, label) item; the metrics, and each judgement."""
    top = TOP_LOGPROBS if settings.llm.logprobs else None
    replies = await asyncio.gather(*(client.complete(messages_for(description, text), json_mode=False,
                                                     max_tokens=settings.answer_max_tokens, top_logprobs=top)
                                     for text, _ in items))
    labels = [label for _, label in items]
    predictions = [read_answer(r.text) for r in replies]
    probabilities = [yes_probability(r.top_logprobs) for r in replies]
    metrics = binary_metrics(labels, predictions, probabilities if top else None)
    metrics["judgements"] = [{"label": y, "answer": p, "p_yes": q} for y, p, q in
                             zip(labels, predictions, probabilities)]
    return metrics


async def score_one(client, descriptions: dict[str, str], positives: list[Snippet], negatives: list[Snippet],
                    settings: ScoreExplanationsSettings, rng: np.random.Generator) -> dict:
    """Detection (and fuzzing) of each named description on the same snippets."""
    detection = [(s.text, True) for s in positives] + [(s.text, False) for s in negatives]
    fuzzing = fuzzing_items(positives, negatives, settings.highlight_fraction, rng) if settings.fuzzing else None
    scores = {}
    for source, description in descriptions.items():
        scores[source] = {"description": description,
                          "detection": await judge_items(client, detection_messages, description, detection, settings)}
        if fuzzing is not None and source != "trivial":  # it names tokens: highlighting them is no test
            scores[source]["fuzzing"] = await judge_items(client, fuzzing_messages, description, fuzzing, settings)
    return scores


def pooled(records: list[dict], source: str, method: str) -> dict:
    """Metrics over every judgement of these features, and the mean per-feature balanced accuracy."""
    judged = [r["scores"][source][method] for r in records if method in r["scores"].get(source, {})]
    items = [j for m in judged for j in m["judgements"]]
    probabilities = [j["p_yes"] for j in items]
    metrics = binary_metrics([j["label"] for j in items], [j["answer"] for j in items],
                             probabilities if items and all(p is not None for p in probabilities) else None)
    metrics["n_features"] = len(judged)
    metrics["mean_feature_balanced_accuracy"] = mean(m["balanced_accuracy"] for m in judged)
    return metrics


def summarize(records: list[dict], methods: list[str]) -> dict:
    layers = sorted({r["layer"] for r in records})

    def block(group):
        return {source: {method: pooled(group, source, method) for method in methods} for source in SOURCES}

    return {"overall": block(records),
            "per_layer": {str(layer): block([r for r in records if r["layer"] == layer]) for layer in layers}}


def score_explanations(*, selection: str | Path, explanations: str | Path, feature_dir: str | Path,
                       validation: str | Path, model_dir: str | Path, transcoder_set: str | Path | None,
                       out_scores: str | Path, out_usage: str | Path, cache_path: str | Path,
                       server_log: str | Path, unit: str, settings: ScoreExplanationsSettings) -> dict:
    """unit: "features" (transcoder features, read through `transcoder_set`) or "neurons"; the
    scores file's metadata records it as "kind"."""
    from circuitflow.interp.negatives import ActivationPool

    explained = {r["cantor_id"]: r for r in read_json(explanations)["features"]}
    skipped: list[dict] = []
    prepared = []
    for entry, feature in load_selection(selection, feature_dir):
        record = explained.get(entry["cantor_id"])
        if record is None:
            skipped.append({"cantor_id": entry["cantor_id"], "reason": "no explanation (explain_features failed)"})
            continue
        shown = explainer_examples(feature, record["n_examples"])
        positives = held_out_positives(feature, settings.positives, shown, settings.seed)
        if not positives:
            skipped.append({"cantor_id": entry["cantor_id"], "reason": "no held-out activating example"})
            continue
        prepared.append((entry, feature, record, positives))
    wanted: dict[int, list[int]] = {}
    for entry, *_ in prepared:
        wanted.setdefault(entry["layer"], []).append(entry["feature"])
    items = []
    if prepared:
        pool = ActivationPool(model_dir, validation, unit, transcoder_set, wanted, settings.negative_pool_windows,
                              settings.neurons_per_layer, settings.seed, settings.model_dtype, settings.device)
        fraction = settings.negative_max_fraction if unit == "features" else settings.neuron_negative_max_fraction
        for entry, feature, record, positives in prepared:
            ceiling = fraction * float(feature.get("act_max", 0.0))
            negatives = pool.negatives(entry["layer"], entry["feature"], positives, settings.negatives,
                                       settings.hard_negative_share, feature, settings.seed, ceiling)
            if not negatives:
                skipped.append({"cantor_id": entry["cantor_id"],
                                "reason": f"no window of the {settings.negative_pool_windows}-window pool where it "
                                          f"stays at or below {ceiling:.3g} (raise interp.negative_pool_windows)"})
                continue
            items.append((entry, record, positives, negatives))

    async def work(client, item):
        entry, record, positives, negatives = item
        descriptions = {"trivial": record["trivial_description"]}
        if record.get("description"):
            descriptions = {"llm": record["description"], **descriptions}
        rng = np.random.default_rng([settings.seed, entry["layer"], entry["feature"]])
        return {"layer": entry["layer"], "feature": entry["feature"], "cantor_id": entry["cantor_id"],
                "activation_freq": entry["activation_freq"], "selected_by": entry["selected_by"],
                "n_positives": len(positives), "n_negatives": len(negatives),
                "scores": await score_one(client, descriptions, positives, negatives, settings, rng)}

    outcomes = judge_all(settings.llm, items, work, cache_path, server_log, out_usage, "score")
    records = [o.result for o in outcomes if o.error is None]
    methods = ["detection", "fuzzing"] if settings.fuzzing else ["detection"]
    result = {"metadata": {"kind": unit, "model": judge_name(settings.llm), "explanations": str(explanations),
                           "n_scored": len(records), "n_skipped": len(skipped), "skipped": skipped,
                           "failed": failures(outcomes, lambda item: {"cantor_id": item[0]["cantor_id"]}),
                           "methods": methods, "logprobs": settings.llm.logprobs},
              "summary": summarize(records, methods), "features": records}
    write_json(out_scores, result)
    overall = result["summary"]["overall"]
    log.info("scored %d %s (%d skipped): detection balanced accuracy llm %s, trivial %s", len(records), unit,
             len(skipped), _fmt(overall["llm"]["detection"]["balanced_accuracy"]),
             _fmt(overall["trivial"]["detection"]["balanced_accuracy"]))
    return result


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
