"""classify_features: the LLM judge sorts each selected feature into the configured categories.

Output ``feature_classifications.json`` in the seed's schema (``metadata`` + ``features``),
plus what the seed lacked: per-layer and overall category shares, the features that failed
(with the reason) and the replies that never parsed (kept raw; a category named in an invalid
reply is salvaged and flagged). Sub-fields follow the seed:
``domain_type`` only for 'domain', ``mechanism*``/``input_pattern``/``output_pattern`` only for
'reasoning'; a category outside the configured ones is recorded as 'unparsed'.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from circuitflow.config import ClassifyFeaturesSettings
from circuitflow.config_rules import check_choice_names
from circuitflow.interp.examples import explainer_examples
from circuitflow.interp.feature_jobs import failures, judge_all, reply_fields
from circuitflow.interp.judge_prompts import classification_messages, classification_schema
from circuitflow.interp.selection import load_selection
from circuitflow.io import write_json
from circuitflow.llm import judge_name

log = logging.getLogger("circuitflow.interp")

UNPARSED = "unparsed"
CONFIDENCE = ("high", "medium", "low")


def _text(value) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _choice(value, allowed) -> str | None:
    """The allowed name the reply gave, matched ignoring case (a category "Math" answered as
    "math", or the reverse); None when it gave none of them."""
    value = _text(value)
    by_folded = {name.strip().casefold(): name for name in allowed}
    return by_folded.get(value.casefold()) if value else None


def classification_record(entry: dict, feature: dict, n_examples: int, reply, settings: ClassifyFeaturesSettings) -> dict:
    data = reply_fields(reply)
    category = _choice(data.get("category"), settings.categories) or UNPARSED
    reasoning = category.casefold() == "reasoning"
    record = {
        "layer": entry["layer"], "feature": entry["feature"], "cantor_id": entry["cantor_id"],
        "category": category, "confidence": _choice(data.get("confidence"), CONFIDENCE),
        "mechanism": _choice(data.get("mechanism"), settings.mechanisms) if reasoning else None,
        "domain_type": _choice(data.get("domain_type"), settings.domain_types) if category.casefold() == "domain" else None,
        "category_description": _text(data.get("category_description")),
        "mechanism_description": _text(data.get("mechanism_description")) if reasoning else None,
        "input_pattern": _text(data.get("input_pattern")) if reasoning else None,
        "output_pattern": _text(data.get("output_pattern")) if reasoning else None,
        "llm_reasoning": _text(data.get("reasoning")),
        "n_examples": n_examples, "activation_freq": entry["activation_freq"],
        "top_logits": feature.get("top_logits", [])[:10], "selected_by": entry["selected_by"],
    }
    if category == UNPARSED or not reply.parsed:
        record["raw_reply"] = reply.text  # kept so a reader sees what the judge said
        record["salvaged"] = category != UNPARSED  # the category came from a reply that was not valid JSON
    return record


def category_shares(records: list[dict], categories) -> dict:
    names = [*categories, UNPARSED]

    def shares(group: list[dict]) -> dict:
        counts = Counter(r["category"] for r in group)
        return {name: counts[name] / len(group) for name in names} if group else {}

    layers = sorted({r["layer"] for r in records})
    return {"overall": shares(records), "n": len(records),
            "per_layer": {str(layer): shares([r for r in records if r["layer"] == layer]) for layer in layers}}


def classify_features(*, selection: str | Path, feature_dir: str | Path, out_classifications: str | Path,
                      out_usage: str | Path, cache_path: str | Path, server_log: str | Path,
                      settings: ClassifyFeaturesSettings) -> dict:
    for key, names in (("interp.categories", settings.categories), ("interp.domain_types", settings.domain_types),
                       ("interp.mechanisms", settings.mechanisms)):
        check_choice_names(key, names)
    items = load_selection(selection, feature_dir)

    schema = classification_schema(settings.categories, settings.domain_types, settings.mechanisms)

    def messages_for(feature):
        return classification_messages(feature, explainer_examples(feature, settings.explainer_examples),
                                       settings.categories, settings.domain_types, settings.mechanisms)

    async def work(client, item):
        entry, feature = item
        reply = await client.complete_json(messages_for(feature), schema=schema, max_tokens=settings.max_tokens)
        n_examples = len(explainer_examples(feature, settings.explainer_examples))
        return classification_record(entry, feature, n_examples, reply, settings)

    outcomes = judge_all(settings.llm, items, work, cache_path, server_log, out_usage, "classify",
                         planned=[messages_for(feature) for _, feature in items],
                         completion_tokens=settings.max_tokens)
    records = [o.result for o in outcomes if o.error is None]
    result = {
        "metadata": {"input_dir": str(feature_dir), "model": judge_name(settings.llm),
                     "selection": str(selection), "n_classified": len(records),
                     "n_unparsed": sum(r["category"] == UNPARSED for r in records),
                     "n_salvaged": sum(bool(r.get("salvaged")) for r in records),
                     "categories": settings.categories,
                     "failed": failures(outcomes, lambda item: {"cantor_id": item[0]["cantor_id"]})},
        "shares": category_shares(records, settings.categories),
        "features": records,
    }
    write_json(out_classifications, result)
    log.info("classified %d features: %s", len(records),
             ", ".join(f"{k} {v:.0%}" for k, v in result["shares"]["overall"].items()))
    return result
