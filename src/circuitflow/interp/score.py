"""score_explanations: how well each explanation predicts where its feature fires.

Three scorers on the same held-out snippets (see negatives.py and examples.py):

- **detection** (delphi's): the judge reads an explanation and a snippet and says whether the
  feature fires on it. Positives are held-out activating examples across the activation
  quantiles (never the ones the explainer saw); negatives are validation windows of the same
  shape on which the feature is verified to be zero, some of them "hard" (containing its top
  tokens).
- **fuzzing**: the same positives with the tokens at or above `highlight_fraction` of the
  peak highlighted (correct), against negatives with as many random tokens highlighted
  (incorrect); the judge says whether the highlighting fits. Only the LLM explanation is fuzzed:
  the token label lists the firing tokens, so it would mark itself.
- **embedding** (delphi's embedding scorer, no chat model): AUROC of the explanation's cosine
  similarity to positives vs negatives under all-MiniLM-L6-v2 (circuitflow.interp.embedding).

Each feature is scored with three explanations: its LLM explanation ("llm"), its token label
("trivial": top activating tokens and top logits), and, as a control, another feature's LLM
explanation ("shuffled", which must sit near chance). With ``interp.scoring_batch_size`` 1
each snippet is one request whose answer is one yes/no token, and with ``llm.logprobs`` the
probability P(yes)/(P(yes)+P(no)) gives AUROC; larger batches number several snippets per
request (circuitflow.interp.batched). Metrics are pooled over judgements (delphi's way) per
layer and overall, with the mean of per-feature balanced accuracies and a hierarchical
bootstrap 95 % interval (features, then snippets) beside them.
"""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path

import numpy as np

from circuitflow.config import ScoreExplanationsSettings
from circuitflow.features.ids import feature_file
from circuitflow.interp.batched import (
    batch_answer_tokens,
    batched_detection_messages,
    batched_fuzzing_messages,
    batches_of,
    judge_items_batched,
)
from circuitflow.interp.examples import Snippet, explainer_examples, held_out_positives, trivial_explanation
from circuitflow.interp.feature_jobs import failures, judge_all
from circuitflow.interp.judge_prompts import detection_messages, fuzzing_messages
from circuitflow.interp.metrics import auroc, binary_metrics, mean
from circuitflow.interp.selection import load_selection
from circuitflow.interp.uncertainty import pooled_intervals
from circuitflow.io import read_json, write_json
from circuitflow.llm import judge_name
from circuitflow.logs import Progress, pick_device

log = logging.getLogger("circuitflow.interp")

# which explanation: the judge's, the token label, or another feature's (the control)
SOURCES = ("llm", "trivial", "shuffled")
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
    """Ask about every (text, label) item, one per request; the metrics, and each judgement."""
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


BATCHED = {detection_messages: batched_detection_messages, fuzzing_messages: batched_fuzzing_messages}


async def judge(client, messages_for, description: str, items: list[tuple[str, bool]],
                settings: ScoreExplanationsSettings, batch_seed: int) -> dict:
    """judge_items, or its batched form when interp.scoring_batch_size > 1."""
    if settings.batch_size == 1:
        return await judge_items(client, messages_for, description, items, settings)
    return await judge_items_batched(client, BATCHED[messages_for], description, items,
                                     batch_size=settings.batch_size, seed=batch_seed,
                                     max_tokens=max(batch_answer_tokens(settings.batch_size),
                                                    settings.answer_max_tokens))


async def score_one(client, descriptions: dict[str, str], positives: list[Snippet], negatives: list[Snippet],
                    settings: ScoreExplanationsSettings, rng: np.random.Generator, embedder=None) -> dict:
    """Detection, fuzzing (the LLM explanation only) and embedding scores of each named
    description on the same snippets."""
    detection = [(s.text, True) for s in positives] + [(s.text, False) for s in negatives]
    fuzzing = fuzzing_items(positives, negatives, settings.highlight_fraction, rng) if settings.fuzzing else None
    batch_seed = int(rng.integers(2**31))  # the same batches for every description
    scores = {}
    for source, description in descriptions.items():
        scores[source] = {"description": description,
                          "detection": await judge(client, detection_messages, description, detection, settings,
                                                   batch_seed)}
        # the token label names tokens (highlighting them is no test); the control is scored by
        # detection and embedding, which is enough to show where chance sits
        if fuzzing is not None and source not in ("trivial", "shuffled"):
            scores[source]["fuzzing"] = await judge(client, fuzzing_messages, description, fuzzing, settings,
                                                    batch_seed)
        if embedder is not None:
            from circuitflow.interp.embedding import embedding_scores

            scores[source]["embedding"] = embedding_scores(embedder, description, detection)
    return scores


def pooled(records: list[dict], source: str, method: str, settings: ScoreExplanationsSettings | None = None) -> dict:
    """Metrics over every judgement of these features, the mean per-feature figure, and (with
    settings.bootstrap_resamples) the bootstrap interval of each pooled figure."""
    judged = [r["scores"][source][method] for r in records if method in r["scores"].get(source, {})]
    items = [j for m in judged for j in m["judgements"]]
    if method == "embedding":
        labels = [j["label"] for j in items]
        metrics = {"n": len(items), "n_positive": sum(labels), "n_negative": len(labels) - sum(labels),
                   "auroc": auroc(labels, [j["similarity"] for j in items]) if items else None,
                   "mean_feature_auroc": mean(m["auroc"] for m in judged)}
    else:
        probabilities = [j["p_yes"] for j in items]
        metrics = binary_metrics([j["label"] for j in items], [j["answer"] for j in items],
                                 probabilities if items and all(p is not None for p in probabilities) else None)
        metrics["mean_feature_balanced_accuracy"] = mean(m["balanced_accuracy"] for m in judged)
    metrics["n_features"] = len(judged)
    if settings is not None and settings.bootstrap_resamples:
        metrics["interval"] = pooled_intervals(records, source=source, method=method,
                                               n_boot=settings.bootstrap_resamples, seed=settings.seed)
    return metrics


def summarize(records: list[dict], methods: list[str], settings: ScoreExplanationsSettings | None = None) -> dict:
    layers = sorted({r["layer"] for r in records})

    def block(group, with_intervals):
        return {source: {method: pooled(group, source, method, settings if with_intervals else None)
                         for method in methods} for source in SOURCES}

    return {"overall": block(records, True),
            "per_layer": {str(layer): block([r for r in records if r["layer"] == layer], False) for layer in layers}}


def shuffled_descriptions(explained: list[tuple[int, str]]) -> dict[int, str]:
    """The control: each feature's explanation replaced by another feature's (the next one in
    the list whose text differs), so no feature keeps its own; empty when fewer than two differ."""
    shuffled = {}
    for i, (cantor_id, own) in enumerate(explained):
        for step in range(1, len(explained)):
            other = explained[(i + step) % len(explained)][1]
            if other != own:
                shuffled[cantor_id] = other
                break
    return shuffled


def planned_requests(items: list, shuffled: dict[int, str], settings: ScoreExplanationsSettings) -> list[list[dict]]:
    """The detection requests the scoring will send (fuzzing and retries aside), for the cost estimate."""
    planned = []
    for entry, record, positives, negatives in items:
        texts = [s.text for s in positives + negatives]
        descriptions = [d for d in (record.get("description"), record["trivial_description"],
                                    shuffled.get(entry["cantor_id"])) if d]
        for description in descriptions:
            if settings.batch_size == 1:
                planned += [detection_messages(description, text) for text in texts]
            else:
                planned += [batched_detection_messages(description, [texts[i] for i in batch])
                            for batch in batches_of(len(texts), settings.batch_size, settings.seed)]
    return planned


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
    embed = settings.embedding_scorer
    graph_features = graph_features_to_embed(selection, feature_dir, {e["cantor_id"] for e, *_ in prepared},
                                             settings) if embed and unit == "features" else []
    wanted: dict[int, list[int]] = {}
    for entry, *_ in prepared + graph_features:
        wanted.setdefault(entry["layer"], []).append(entry["feature"])
    items = []
    pool = None
    if wanted:
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

    shuffled = (shuffled_descriptions([(entry["cantor_id"], record["description"]) for entry, record, *_ in items
                                       if record.get("description")]) if settings.shuffled_control else {})
    embedder = None
    if embed and (items or graph_features):
        from circuitflow.interp.embedding import SentenceEmbedder

        embedder = SentenceEmbedder(device=pick_device(settings.device))
    graph_records = (embed_graph_token_labels(graph_features, pool, embedder, settings)
                     if graph_features else [])

    async def work(client, item):
        entry, record, positives, negatives = item
        descriptions = {"trivial": record["trivial_description"]}
        if record.get("description"):
            descriptions = {"llm": record["description"], **descriptions}
        if entry["cantor_id"] in shuffled:
            descriptions["shuffled"] = shuffled[entry["cantor_id"]]
        rng = np.random.default_rng([settings.seed, entry["layer"], entry["feature"]])
        return {"layer": entry["layer"], "feature": entry["feature"], "cantor_id": entry["cantor_id"],
                "activation_freq": entry["activation_freq"], "selected_by": entry["selected_by"],
                "n_positives": len(positives), "n_negatives": len(negatives),
                "scores": await score_one(client, descriptions, positives, negatives, settings, rng, embedder)}

    answer_tokens = batch_answer_tokens(settings.batch_size) if settings.batch_size > 1 else settings.answer_max_tokens
    outcomes = judge_all(settings.llm, items, work, cache_path, server_log, out_usage, "score",
                         planned=planned_requests(items, shuffled, settings), completion_tokens=answer_tokens)
    records = [o.result for o in outcomes if o.error is None]
    methods = ["detection", "fuzzing"] if settings.fuzzing else ["detection"]
    if embedder is not None:
        methods.append("embedding")
    result = {"metadata": {"kind": unit, "model": judge_name(settings.llm), "explanations": str(explanations),
                           "n_scored": len(records), "n_skipped": len(skipped), "skipped": skipped,
                           "failed": failures(outcomes, lambda item: {"cantor_id": item[0]["cantor_id"]}),
                           "methods": methods, "logprobs": settings.llm.logprobs and settings.batch_size == 1,
                           "scoring_batch_size": settings.batch_size,
                           "embedding_model": embedder.name if embedder is not None else None,
                           "bootstrap_resamples": settings.bootstrap_resamples},
              "summary": summarize(records, methods, settings), "features": records}
    if graph_records:
        result["graph_token_labels"] = {"summary": pooled(graph_records, "trivial", "embedding", settings),
                                        "features": graph_records}
    write_json(out_scores, result)
    overall = result["summary"]["overall"]
    log.info("scored %d %s (%d skipped): detection balanced accuracy llm %s, token label %s, shuffled %s", len(records),
             unit, len(skipped), _fmt(overall["llm"]["detection"]["balanced_accuracy"]),
             _fmt(overall["trivial"]["detection"]["balanced_accuracy"]),
             _fmt(overall["shuffled"]["detection"]["balanced_accuracy"]))
    return result


def graph_features_to_embed(selection: str | Path, feature_dir: str | Path, judged: set[int],
                            settings: ScoreExplanationsSettings) -> list[tuple[dict, dict, None, list[Snippet]]]:
    """The graphs' feature nodes (the most influential `interp.embedding_graph_features`) not
    judged here, each with its held-out positives, shaped like `prepared`'s entries."""
    ranked = read_json(selection).get("graph_features", [])
    if settings.embedding_graph_features is not None:
        ranked = ranked[:settings.embedding_graph_features]
    prepared = []
    for cantor_id in ranked:
        path = feature_file(feature_dir, cantor_id)
        if cantor_id in judged or not path.is_file():
            continue
        feature = read_json(path)
        positives = held_out_positives(feature, settings.positives, [], settings.seed)
        if positives:
            entry = {"cantor_id": int(cantor_id), "layer": int(feature["layer"]), "feature": int(feature["feature"])}
            prepared.append((entry, feature, None, positives))
    return prepared


def embed_graph_token_labels(graph_features: list, pool, embedder, settings: ScoreExplanationsSettings) -> list[dict]:
    """Embedding scores of each graph feature's token label, on held-out positives and verified
    negatives chosen exactly as for the judged features (records shaped like theirs, source "trivial")."""
    from circuitflow.interp.embedding import embedding_scores

    records = []
    progress = Progress(log, "embedding scores of graph token labels", len(graph_features), "features")
    for entry, feature, _, positives in graph_features:
        negatives = pool.negatives(entry["layer"], entry["feature"], positives, settings.negatives,
                                   settings.hard_negative_share, feature, settings.seed,
                                   settings.negative_max_fraction * float(feature.get("act_max", 0.0)))
        if negatives:
            label = trivial_explanation(feature)
            items = [(s.text, True) for s in positives] + [(s.text, False) for s in negatives]
            records.append({**entry, "n_positives": len(positives), "n_negatives": len(negatives),
                            "scores": {"trivial": {"description": label,
                                                   "embedding": embedding_scores(embedder, label, items)}}})
        progress.update(1)
    return records


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
