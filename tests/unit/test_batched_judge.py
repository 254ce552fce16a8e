"""Batched detection and fuzzing (circuitflow.interp.batched) against a real loopback HTTP
server: a planted oracle that reads the numbered snippets out of each request and answers by a
true rule scores 1.0 with judgements in item order, a wrong rule scores chance, a missing or
garbled answer costs only its own snippet, batching sends ceil(n/b) requests, and batches of one
feature share their prompt up to the snippets (what prefix caching reuses)."""

from __future__ import annotations

import asyncio
import math
import re

import pytest

from circuitflow.config import LLMSettings
from circuitflow.interp.batched import (BATCHED_DETECTION_SYSTEM, BATCHED_FUZZING_SYSTEM, batch_answer_tokens,
                                        batched_detection_messages, batched_fuzzing_messages, batches_of,
                                        judge_items_batched, read_numbered_answers)
from circuitflow.llm import LLMClient

from ..llm_server import ScriptedServer

# Positives contain digits; "cat" is in half of each class, so "the word cat" is exactly chance.
POSITIVES = ["he paid 12 dollars", "a cat ate 3 fish", "in 1999 we met", "my cat is 7 now", "room 42 is free",
             "the cat weighs 5 kilos"]
NEGATIVES = ["she sang a song", "a cat sat down", "we met at noon", "my cat sleeps a lot", "the room is free",
             "the cat is grey"]
ITEMS = [(t, True) for t in POSITIVES] + [(t, False) for t in NEGATIVES]
RULES = {"numbers written with digits": lambda text: any(c.isdigit() for c in text),
         "the word cat": lambda text: "cat" in text}


def llm(base_url) -> LLMSettings:
    return LLMSettings(base_url=base_url, model="judge", api_key_env=None, max_retries=0, timeout_s=5.0,
                       backoff_s=0.01, max_concurrency=4)


def parse_request(body) -> tuple[str, list[str]]:
    """The description and the numbered snippets of a batched request, as the judge reads them."""
    user = body["messages"][-1]["content"]
    description = re.match(r"Description: (.*?)\n\n", user).group(1)
    numbered = re.findall(r"Text (\d+):\n(.*?)(?=\n\nText \d+:\n|\n\n[^\n]*Answer for each|\Z)", user, re.DOTALL)
    assert [int(i) for i, _ in numbered] == list(range(1, len(numbered) + 1))
    return description, [text.replace("<<", "").replace(">>", "") for _, text in numbered]


def oracle(answer_for, garble=lambda text: False):
    """Applies the description's true rule to each snippet; answers in reverse order after a line of
    prose (a reader that went by position would shift them). A snippet for which `garble` holds
    gets an unreadable answer."""
    def respond(body):
        description, texts = parse_request(body)
        lines = [f"{i}: {'maybe' if garble(t) else 'yes' if answer_for(description, t) else 'no'}"
                 for i, t in enumerate(texts, 1)]
        return ("reply", "Here are my answers.\n" + "\n".join(reversed(lines)))
    return respond


def judge(server, description, items, batch_size, messages_for=batched_detection_messages, seed=0):
    async def go(cache):
        client = LLMClient(llm(server.base_url), cache)
        try:
            return await judge_items_batched(client, messages_for, description, items, batch_size=batch_size,
                                             max_tokens=batch_answer_tokens(batch_size), seed=seed)
        finally:
            await client.aclose()
    return go


def test_a_true_rule_scores_one_in_item_order_and_a_wrong_rule_chance(tmp_path):
    server = ScriptedServer(default=oracle(lambda description, text: RULES[description](text)))
    try:
        true = asyncio.run(judge(server, "numbers written with digits", ITEMS, 5)(tmp_path / "a.sqlite"))
        wrong = asyncio.run(judge(server, "the word cat", ITEMS, 5)(tmp_path / "b.sqlite"))
    finally:
        server.close()
    assert (true["tp"], true["fp"], true["tn"], true["fn"], true["n_unparsed"]) == (6, 0, 6, 0, 0)
    assert true["balanced_accuracy"] == 1.0 and true["auroc"] is None and true["n_requests"] == 3
    # judgements come back in the items' order, whatever the shuffle put in each batch
    assert [j["label"] for j in true["judgements"]] == [label for _, label in ITEMS]
    assert [j["answer"] for j in wrong["judgements"]] == ["cat" in text for text, _ in ITEMS]
    assert all(j["p_yes"] is None for j in true["judgements"])
    # "cat" is in 3 of 6 positives and 3 of 6 negatives
    assert (wrong["tp"], wrong["fp"], wrong["tn"], wrong["fn"]) == (3, 3, 3, 3)
    assert wrong["balanced_accuracy"] == 0.5


def test_fuzzing_batches_send_the_highlighted_texts(tmp_path):
    highlighted = [(re.sub(r"(\d+)", r"<<\1>>", t), True) for t in POSITIVES] + [
        (re.sub(r"^(\S+)", r"<<\1>>", t), False) for t in NEGATIVES]
    seen = []

    def respond(body):
        seen.append(body["messages"])
        return oracle(lambda description, text: RULES[description](text))(body)

    server = ScriptedServer(default=respond)
    try:
        result = asyncio.run(judge(server, "numbers written with digits", highlighted, 4,
                                   messages_for=batched_fuzzing_messages)(tmp_path / "c.sqlite"))
    finally:
        server.close()
    assert result["balanced_accuracy"] == 1.0 and result["n_requests"] == 3
    assert all(m[0]["content"] == BATCHED_FUZZING_SYSTEM and "<<" in m[1]["content"] for m in seen)


def test_a_missing_or_garbled_answer_is_none_and_the_others_stay(tmp_path):
    garbled, missing = "in 1999 we met", "she sang a song"

    def respond(body):
        description, texts = parse_request(body)
        reply = oracle(lambda d, t: RULES[d](t), garble=lambda t: t == garbled)(body)[1]
        if missing in texts:  # drop that snippet's line altogether
            reply = "\n".join(line for line in reply.splitlines()
                              if line != f"{texts.index(missing) + 1}: no")
        return ("reply", reply)

    server = ScriptedServer(default=respond)
    try:
        result = asyncio.run(judge(server, "numbers written with digits", ITEMS, 4)(tmp_path / "d.sqlite"))
    finally:
        server.close()
    answers = [j["answer"] for j in result["judgements"]]
    texts = [text for text, _ in ITEMS]
    assert answers[texts.index(garbled)] is None and answers[texts.index(missing)] is None
    assert result["n_unparsed"] == 2
    assert all(a == label for a, (text, label) in zip(answers, ITEMS) if text not in (garbled, missing))
    # None counts as "no": the garbled positive is a false negative, the missing negative a true negative
    assert (result["tp"], result["fn"], result["tn"], result["fp"]) == (5, 1, 6, 0)


@pytest.mark.parametrize("batch_size", [1, 4, 5, 12, 50])
def test_n_items_in_batches_of_b_take_ceil_n_over_b_requests(tmp_path, batch_size):
    server = ScriptedServer(default=oracle(lambda description, text: RULES[description](text)))
    try:
        result = asyncio.run(judge(server, "numbers written with digits", ITEMS, batch_size)(tmp_path / "e.sqlite"))
    finally:
        server.close()
    expected = math.ceil(len(ITEMS) / batch_size)
    assert result["n_requests"] == expected == len(server.requests)
    sizes = sorted(len(parse_request(body)[1]) for body in server.requests)
    assert sum(sizes) == len(ITEMS) and max(sizes) == min(batch_size, len(ITEMS))
    assert all(body["max_tokens"] == batch_answer_tokens(batch_size) for body in server.requests)
    assert all("response_format" not in body for body in server.requests)  # numbered lines, not JSON mode
    assert result["balanced_accuracy"] == 1.0


def test_batches_are_seeded_shuffles_that_mix_the_classes():
    first = batches_of(12, 4, seed=0)
    assert first == batches_of(12, 4, seed=0) and first != batches_of(12, 4, seed=1)
    assert sorted(i for batch in first for i in batch) == list(range(12))
    assert first != [list(range(0, 4)), list(range(4, 8)), list(range(8, 12))]
    # items 0-5 are positives: some batch of this seed holds both classes
    assert any({i < 6 for i in batch} == {True, False} for batch in first)
    with pytest.raises(ValueError, match="interp.scoring_batch_size"):
        batches_of(12, 0, seed=0)


def test_batches_of_one_feature_share_the_prompt_up_to_the_snippets(tmp_path):
    server = ScriptedServer(default=oracle(lambda description, text: RULES[description](text)))
    try:
        asyncio.run(judge(server, "numbers written with digits", ITEMS, 5)(tmp_path / "f.sqlite"))
        asyncio.run(judge(server, "the word cat", ITEMS, 5)(tmp_path / "g.sqlite"))
    finally:
        server.close()
    digits, cat = server.requests[:3], server.requests[3:]
    for batch in (digits, cat):
        users = [body["messages"][1]["content"] for body in batch]
        prefix = users[0][:users[0].index("Text 1:\n")]
        assert "Description: " in prefix and all(u.startswith(prefix) for u in users)
        assert all(body["messages"][0] == batch[0]["messages"][0] for body in batch)
        assert len({u[len(prefix):] for u in users}) == len(users)  # the snippets differ
    # across features, only the system message is shared
    assert digits[0]["messages"][0] == cat[0]["messages"][0]
    assert digits[0]["messages"][1]["content"].split("\n")[0] != cat[0]["messages"][1]["content"].split("\n")[0]


def test_the_prompts_hold_no_placeholder_a_weak_model_could_copy():
    for system in (BATCHED_DETECTION_SYSTEM, BATCHED_FUZZING_SYSTEM):
        assert "..." not in system and "…" not in system and "<answer>" not in system
        assert not re.search(r"<(?!<)[a-z ]+>", system.replace("<<", "").replace(">>", ""))
    user = batched_detection_messages("dates", ["in 1999", "on Monday"])[1]["content"]
    assert "..." not in user and user.index("Description: dates") < user.index("Text 1:\nin 1999")
    with pytest.raises(ValueError, match="at least one text"):
        batched_detection_messages("dates", [])


@pytest.mark.parametrize("reply, n, expected", [
    ("1: yes\n2: no\n3: yes", 3, [True, False, True]),
    ("Sure. My answers:\n3: no\n1: Yes\n2: NO", 3, [True, False, False]),  # out of order, by number
    ("1. yes\n2. no\n\nText 2 has no digits.", 2, [True, False]),  # prose after a blank line
    ("**1.** Yes\n- 2: false\nText 3 - true", 3, [True, False, True]),
    ("1: yes, 2: no, 3: yes", 3, [True, False, True]),
    ("1: 1\n2: 0", 2, [True, False]),
    ('{"answers": [1, 0, 1]}', 3, [True, False, True]),
    ('```json\n{"answers": [true, false]}\n```', 2, [True, False]),
    ('{"1": "yes", "3": "no"}', 3, [True, None, False]),
    ('[{"text": 2, "answer": 0}, {"text": 1, "answer": "yes"}]', 3, [True, False, None]),
    ("[1, 0, 1]", 3, [True, False, True]),
    ("['yes', 'no']", 2, [True, False]),
    ("yes\nno\nyes", 3, [True, False, True]),
    ("Answers: 1, 0, 1", 3, [True, False, True]),
    ("Yes", 1, [True]),
    ("1: yes\n3: no", 3, [True, None, False]),  # missing: None, never shifted
    ("1: yes\n2: maybe\n3: no", 3, [True, None, False]),  # unreadable
    ("1: yes\n1: no\n2: no", 2, [None, False]),  # contradictory
    ("1: yes\n2: no\n3: yes\n4: no", 3, [True, False, True]),  # extra numbers ignored
    ("[1, 0]", 3, [None, None, None]),  # a short bare list cannot say which answer is missing
    ("No answers for text 1", 2, [None, None]),
    ("I cannot tell.", 2, [None, None]),
])
def test_read_numbered_answers_is_tolerant_and_never_shifts(reply, n, expected):
    assert read_numbered_answers(reply, n) == expected


def test_max_tokens_fits_a_full_reply(smollm2_tokenizer):
    for batch_size in (1, 5, 10, 20):
        reply = "\n".join(f"{i}: {'yes' if i % 2 else 'no'}" for i in range(1, batch_size + 1))
        assert len(smollm2_tokenizer(reply, add_special_tokens=False)["input_ids"]) < batch_answer_tokens(batch_size)
    with pytest.raises(ValueError, match="interp.scoring_batch_size"):
        batch_answer_tokens(0)
