"""explain_features: one LLM explanation per selected feature, from its top activating examples.

Output ``autointerp.json`` in the seed's schema (``description``, ``reasoning`` per feature),
without the detection fields: scoring is its own rule (score_explanations), so explanations
can be rescored with another judge without asking for them again. Every feature also gets
``trivial_description``, the non-LLM baseline (its top activating tokens and top logits).
A reply that never parses keeps its raw text; a description it names before going wrong is
salvaged, else the feature falls back to the trivial description.
"""

from __future__ import annotations

import logging
from pathlib import Path

from circuitflow.config import ExplainFeaturesSettings
from circuitflow.interp.examples import MARK, explainer_examples, trivial_explanation
from circuitflow.interp.feature_jobs import failures, judge_all, reply_fields
from circuitflow.interp.judge_prompts import explanation_messages
from circuitflow.interp.selection import load_selection
from circuitflow.io import write_json
from circuitflow.llm import judge_name

log = logging.getLogger("circuitflow.interp")


def clean_description(value) -> str | None:
    """The description without the seed's markers (a weak judge copies them), or None if empty."""
    if not isinstance(value, str):
        return None
    for marker in MARK:
        value = value.replace(marker, "")
    value = " ".join(value.split()).strip(" \"'")
    return value or None


def explain_features(*, selection: str | Path, feature_dir: str | Path, out_explanations: str | Path,
                     out_usage: str | Path, cache_path: str | Path, server_log: str | Path,
                     settings: ExplainFeaturesSettings) -> dict:
    items = load_selection(selection, feature_dir)

    async def work(client, item):
        entry, feature = item
        examples = explainer_examples(feature, settings.explainer_examples)
        reply = await client.complete_json(explanation_messages(feature, examples))
        data = reply_fields(reply)
        description = clean_description(data.get("description"))
        record = {"layer": entry["layer"], "feature": entry["feature"], "cantor_id": entry["cantor_id"],
                  "description": description, "reasoning": data.get("reasoning") if description else None,
                  "trivial_description": trivial_explanation(feature),
                  "n_examples": len(examples), "activation_freq": entry["activation_freq"],
                  "selected_by": entry["selected_by"]}
        if description is None:
            record["raw_reply"] = reply.text
        return record

    outcomes = judge_all(settings.llm, items, work, cache_path, server_log, out_usage, "explain")
    records = [o.result for o in outcomes if o.error is None]
    result = {"metadata": {"input_dir": str(feature_dir), "model": judge_name(settings.llm),
                           "selection": str(selection), "n_processed": len(records),
                           "n_without_description": sum(r["description"] is None for r in records),
                           "failed": failures(outcomes, lambda item: {"cantor_id": item[0]["cantor_id"]})},
              "features": records}
    write_json(out_explanations, result)
    log.info("explained %d features (%d replies without a usable description)", len(records),
             result["metadata"]["n_without_description"])
    return result
