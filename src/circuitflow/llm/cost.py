"""What an LLM stage will cost, estimated before it runs from the messages it plans to send.

No tokenizer is needed (the judge's may be remote or unknown), so prompt tokens follow a rule
of thumb: each message's content counts ceil(characters / 4) tokens, plus 4 tokens per message
for its role and the chat template's delimiters, plus 3 tokens per request for the start of the
reply. On English prose that is within a few percent of real tokenizers (benchmarks/
judge_prompt_tokens.py compares it with SmolLM2's). The measured usage is written after the
stage by `LLMClient.write_usage`; this estimate is the line logged before it.
"""

from __future__ import annotations

import math

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REQUEST = 3


def estimate_prompt_tokens(messages: list[dict]) -> int:
    """Prompt tokens of one request by the rule above."""
    total = TOKENS_PER_REQUEST
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise ValueError(f"a planned message has no text content ({message!r:.80}); each message must be "
                             "a dict with a string 'content'")
        total += math.ceil(len(content) / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE
    return total


def estimate_cost(*, requests: list[list[dict]], completion_tokens_per_request: int,
                  price_per_million_prompt: float | None, price_per_million_completion: float | None,
                  n_features: int) -> dict:
    """Requests, prompt and completion tokens, and the cost (in the prices' currency) for this job
    and per 1,000 features; costs are None when either price is not set."""
    if completion_tokens_per_request < 0:
        raise ValueError(f"completion_tokens_per_request is {completion_tokens_per_request}; it must be 0 or more")
    if n_features < 0:
        raise ValueError(f"n_features is {n_features}; it must be 0 or more")
    for name, price in (("llm.price_per_million_prompt", price_per_million_prompt),
                        ("llm.price_per_million_completion", price_per_million_completion)):
        if price is not None and price < 0:
            raise ValueError(f"{name} is {price}; set a price of 0 or more, or null")
    prompt_tokens = sum(estimate_prompt_tokens(messages) for messages in requests)
    completion_tokens = completion_tokens_per_request * len(requests)
    priced = price_per_million_prompt is not None and price_per_million_completion is not None
    cost = ((prompt_tokens * price_per_million_prompt + completion_tokens * price_per_million_completion) / 1e6
            if priced else None)
    per_1000 = cost / n_features * 1000 if cost is not None and n_features else None
    return {"requests": len(requests), "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "n_features": n_features, "cost": cost, "cost_per_1000_features": per_1000}


def format_estimate(estimate: dict) -> str:
    """One log line: requests, prompt and completion tokens, cost for this job and per 1,000 features."""
    line = (f"planned {estimate['requests']:,} requests, about {estimate['prompt_tokens']:,} prompt tokens "
            f"(characters/4 + {TOKENS_PER_MESSAGE} per message) and {estimate['completion_tokens']:,} "
            f"completion tokens for {estimate['n_features']:,} features")
    if estimate["cost"] is None:
        return line + "; cost: prices not set (llm.price_per_million_prompt, llm.price_per_million_completion)"
    per_1000 = estimate["cost_per_1000_features"]
    return (line + f"; estimated cost {_money(estimate['cost'])} for this job"
            + (f", {_money(per_1000)} per 1,000 features" if per_1000 is not None else ""))


def _money(value: float) -> str:
    """Enough digits to be useful for both a cent and a thousand (the prices' currency)."""
    return f"{value:,.2f}" if value >= 1 else f"{value:.4g}"
