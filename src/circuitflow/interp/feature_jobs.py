"""Running one LLM job over many features: the judge opened once, features judged
concurrently (bounded by llm.max_concurrency), failures recorded per feature, usage written."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from circuitflow.config import LLMSettings
from circuitflow.llm import LLMClient, Outcome, open_judge
from circuitflow.llm.cost import estimate_cost, format_estimate
from circuitflow.logs import Progress

log = logging.getLogger("circuitflow.interp")


def judge_all(settings: LLMSettings, items: list, work: Callable[[LLMClient, Any], Awaitable[Any]],
              cache_path: str | Path, server_log: str | Path, out_usage: str | Path, what: str, *,
              planned: list[list[dict]], completion_tokens: int) -> list[Outcome]:
    """`work(client, item)` for every item; returns one Outcome per item, in order. `planned`
    (the requests the stage expects to send, each completion up to `completion_tokens`) is
    logged first as a cost estimate; the measured usage is written to `out_usage` after."""
    log.info("%s: %s", what, format_estimate(estimate_cost(
        requests=planned, completion_tokens_per_request=completion_tokens,
        price_per_million_prompt=settings.price_per_million_prompt,
        price_per_million_completion=settings.price_per_million_completion, n_features=len(items))))

    async def main() -> list[Outcome]:
        async with open_judge(settings, cache_path, server_log) as client:
            progress = Progress(log, what, len(items), "features")

            async def one(item):
                try:
                    return await work(client, item)
                finally:
                    progress.update(1)

            outcomes = await client.run_all(items, one)
            usage = client.write_usage(out_usage)
            log.info("%s: %d requests (%d retries, %d re-asks, %d unparsed), %d cache hits, %d+%d tokens, %.1fs",
                     what, usage["requests"], usage["retries"], usage["reasks"], usage["unparsed_replies"],
                     usage["cache_hits"], usage["prompt_tokens"], usage["completion_tokens"], usage["wall_seconds"])
            return outcomes

    return asyncio.run(main())


def failures(outcomes: list[Outcome], describe: Callable[[Any], dict]) -> list[dict]:
    return [{**describe(o.item), "error": o.error} for o in outcomes if o.error]


def salvage_fields(text: str) -> dict:
    """String fields of a reply that is not valid JSON (cut off at max_tokens, say): a weak
    judge often names the category or description correctly before its JSON goes wrong."""
    return dict(re.findall(r'"(\w+)"\s*:\s*"([^"]*)"', text))


def reply_fields(reply) -> dict:
    """The reply's JSON object, or the fields salvaged from its raw text."""
    return reply.data if reply.parsed and isinstance(reply.data, dict) else salvage_fields(reply.text)
