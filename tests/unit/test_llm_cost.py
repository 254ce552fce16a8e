"""The pre-stage cost estimate (circuitflow.llm.cost): the token rule by hand, costs by hand,
the log line with and without prices, bad input, and the rule against a real tokenizer."""

from __future__ import annotations

import json
import lzma

import pytest

from circuitflow.interp.batched import batched_detection_messages
from circuitflow.interp.judge_prompts import detection_messages
from circuitflow.llm.cost import estimate_cost, estimate_prompt_tokens, format_estimate
from ..conftest import ROOT


def test_prompt_tokens_follow_the_stated_rule():
    # 3 per request; per message ceil(chars / 4) + 4: "abcd" -> 1 + 4, "abcde" -> 2 + 4
    messages = [{"role": "system", "content": "abcd"}, {"role": "user", "content": "abcde"}]
    assert estimate_prompt_tokens(messages) == 3 + (1 + 4) + (2 + 4)
    assert estimate_prompt_tokens([{"role": "user", "content": ""}]) == 3 + 4
    with pytest.raises(ValueError, match="string 'content'"):
        estimate_prompt_tokens([{"role": "user", "content": None}])


def test_costs_by_hand():
    request = [{"role": "user", "content": "x" * 396}]  # 99 + 4 + 3 = 106 tokens
    estimate = estimate_cost(requests=[request] * 10, completion_tokens_per_request=20,
                             price_per_million_prompt=0.5, price_per_million_completion=2.0, n_features=4)
    assert estimate["requests"] == 10 and estimate["prompt_tokens"] == 1060 and estimate["completion_tokens"] == 200
    assert estimate["cost"] == pytest.approx((1060 * 0.5 + 200 * 2.0) / 1e6)
    assert estimate["cost_per_1000_features"] == pytest.approx(estimate["cost"] / 4 * 1000)
    line = format_estimate(estimate)
    assert "10 requests" in line and "1,060 prompt tokens" in line and "200 completion tokens" in line
    assert "4 features" in line and "0.00093 for this job" in line and "0.2325 per 1,000 features" in line
    assert "\n" not in line


def test_without_prices_the_line_says_so():
    estimate = estimate_cost(requests=[[{"role": "user", "content": "hello"}]], completion_tokens_per_request=2,
                             price_per_million_prompt=None, price_per_million_completion=1.0, n_features=1)
    assert estimate["cost"] is None and estimate["cost_per_1000_features"] is None
    assert "prices not set" in format_estimate(estimate)
    empty = estimate_cost(requests=[], completion_tokens_per_request=2, price_per_million_prompt=1.0,
                          price_per_million_completion=1.0, n_features=0)
    assert empty["cost"] == 0.0 and empty["cost_per_1000_features"] is None
    assert "per 1,000 features" not in format_estimate(empty)


def test_bad_input_names_the_thing():
    with pytest.raises(ValueError, match="llm.price_per_million_prompt is -1"):
        estimate_cost(requests=[], completion_tokens_per_request=1, price_per_million_prompt=-1,
                      price_per_million_completion=1.0, n_features=1)
    with pytest.raises(ValueError, match="completion_tokens_per_request"):
        estimate_cost(requests=[], completion_tokens_per_request=-1, price_per_million_prompt=None,
                      price_per_million_completion=None, n_features=1)


def test_the_rule_is_close_to_a_real_tokenizer_on_judge_prompts(smollm2_tokenizer):
    with lzma.open(ROOT / "resources" / "corpus" / "english-mix.jsonl.xz", "rt") as handle:
        texts = [json.loads(next(handle))["text"][:160] for _ in range(40)]
    description = "numbers written with digits, mostly years and prices in running text"
    plans = [detection_messages(description, text) for text in texts[:10]]
    plans += [batched_detection_messages(description, texts[i:i + 10]) for i in range(0, 40, 10)]
    estimated = sum(estimate_prompt_tokens(messages) for messages in plans)
    counted = sum(len(smollm2_tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True))
                  for messages in plans)
    assert abs(estimated - counted) / counted < 0.2, (estimated, counted)
