"""How many completion tokens the judge's JSON replies take, per stage, read from a run's
response cache: the figures behind interp.classify_max_tokens and interp.explain_max_tokens.

    python benchmarks/judge_reply_lengths.py results/smollm2-135m/interp/llm-cache/*.sqlite

A reply is valid when it parses as a JSON object holding every field its schema requires; a
reply that used its whole budget was cut off. The suggested budget is the longest valid reply
plus half again as headroom (a cut-off reply is not counted as valid, so a budget that cut off
most replies shows up as a low "valid" count rather than as a short longest reply).
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3

from circuitflow.interp.judge_prompts import EXPLANATION_SCHEMA
from circuitflow.llm.client import extract_json

HEADROOM = 1.5


def stage_of(schema: dict | None) -> str | None:
    if not schema:
        return None
    if schema == EXPLANATION_SCHEMA:
        return "explain"
    return "classify" if "category" in schema.get("properties", {}) else None


def is_valid(reply: str, schema: dict) -> bool:
    try:
        data = extract_json(reply)
    except ValueError:
        return False
    return isinstance(data, dict) and all(data.get(key) not in (None, "") for key in schema.get("required", []))


def reply_lengths(cache_paths: list[str]) -> dict[str, dict]:
    stages: dict[str, dict] = {}
    for cache_path in cache_paths:
        db = sqlite3.connect(f"file:{cache_path}?mode=ro", uri=True)
        _count_replies(db, stages)
        db.close()
    return stages


def _count_replies(db: sqlite3.Connection, stages: dict[str, dict]) -> None:
    for request, reply, usage in db.execute("SELECT request, reply, usage FROM replies"):
        request, usage = json.loads(request), json.loads(usage)
        stage = stage_of(request.get("schema"))
        if stage is None:
            continue
        tokens, budget = int(usage.get("completion_tokens", 0)), int(request["max_tokens"])
        row = stages.setdefault(stage, {"replies": 0, "cut_off": 0, "valid": [], "budget": set()})
        row["replies"] += 1
        row["budget"].add(budget)
        if tokens >= budget:
            row["cut_off"] += 1
        elif is_valid(reply, request["schema"]):
            row["valid"].append(tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("caches", nargs="+", help="a run's response caches, interp/llm-cache/*.sqlite")
    args = parser.parse_args()
    print("stage     replies  valid  cut off  longest valid  p95 valid  budget(s)  suggested")
    for stage, row in sorted(reply_lengths(args.caches).items()):
        valid = sorted(row["valid"])
        longest = valid[-1] if valid else None
        p95 = valid[min(len(valid) - 1, math.ceil(0.95 * len(valid)) - 1)] if valid else None
        suggested = math.ceil(HEADROOM * longest) if longest else None
        print(f"{stage:<9} {row['replies']:>7} {len(valid):>6} {row['cut_off']:>8} {str(longest):>14} "
              f"{str(p95):>10} {','.join(map(str, sorted(row['budget']))):>10} {str(suggested):>10}")


if __name__ == "__main__":
    main()
