"""explain_features: one LLM explanation per selected feature, from its top activating examples.

Output ``autointerp.json`` in the seed's schema (``description``, ``reasoning`` per feature),
without the detection fields: scoring is its own rule (score_explanations), so explanations
can be rescored with another judge without asking for them again. Every feature also gets
``trivial_description``, the non-LLM baseline (its top activating tokens and top logits).
A reply whose description is unusable (empty, a placeholder, a few words, or the prompt's
instructions restated: circuitflow.interp.reply_checks) is re-asked once; if it is still
unusable, or never parses, the feature gets no LLM description (its raw reply and the reason
are kept) and falls back to the token label. A description named before a reply went wrong is
salvaged only if it passes the same check.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from circuitflow.config import ExplainFeaturesSettings
from circuitflow.interp.examples import MARK, explainer_examples, trivial_explanation
from circuitflow.interp.feature_jobs import failures, judge_all, reply_fields
from circuitflow.interp.judge_prompts import EXPLANATION_SCHEMA, explanation_messages, instructions
from circuitflow.interp.reply_checks import unusable_reason
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
        messages = explanation_messages(feature, examples)
        prompt = instructions(messages)

        def check(data: dict) -> str | None:
            return unusable_reason(clean_description(data.get("description")), prompt)

        reply = await client.complete_json(messages, schema=EXPLANATION_SCHEMA, max_tokens=settings.max_tokens,
                                           check=check)
        data = reply_fields(reply)
        problem = reply.problem if reply.parsed else check(data)
        description = clean_description(data.get("description")) if problem is None else None
        record = {"layer": entry["layer"], "feature": entry["feature"], "cantor_id": entry["cantor_id"],
                  "description": description, "reasoning": data.get("reasoning") if description else None,
                  "trivial_description": trivial_explanation(feature),
                  "n_examples": len(examples), "activation_freq": entry["activation_freq"],
                  "selected_by": entry["selected_by"]}
        if description is None:
            record["raw_reply"] = reply.text
            record["unusable_reason"] = problem
        return record

    planned = [explanation_messages(feature, explainer_examples(feature, settings.explainer_examples))
               for _, feature in items]
    outcomes = judge_all(settings.llm, items, work, cache_path, server_log, out_usage, "explain",
                         planned=planned, completion_tokens=settings.max_tokens)
    records = [o.result for o in outcomes if o.error is None]
    result = {"metadata": {"input_dir": str(feature_dir), "model": judge_name(settings.llm),
                           "selection": str(selection), "n_processed": len(records),
                           "n_without_description": sum(r["description"] is None for r in records),
                           "unusable_reasons": dict(Counter(r["unusable_reason"] for r in records
                                                            if r["description"] is None)),
                           "failed": failures(outcomes, lambda item: {"cantor_id": item[0]["cantor_id"]})},
              "features": records}
    write_json(out_explanations, result)
    log.info("explained %d features (%d replies without a usable description)", len(records),
             result["metadata"]["n_without_description"])
    return result
