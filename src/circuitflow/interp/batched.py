"""Batched detection and fuzzing for capable judges (OpenAI, vLLM, Ollama): several numbered
snippets per request, one yes/no answer per snippet (delphi's way of scoring).

Beside the one-snippet-per-request scorer of score.py, which a weak local judge needs (one
yes/no token, logprobs for AUROC), a capable judge can answer a numbered list: fewer requests,
and far fewer prompt tokens per judged snippet because the instructions and the description are
sent once per batch instead of once per snippet.

- The prompt puts everything shared first (the system instructions, shared by every feature;
  then the description, shared by every batch of one feature) and the numbered snippets last, so
  a server with prefix caching (vLLM's --enable-prefix-caching, OpenAI's automatic caching)
  computes the shared part once.
- Items are shuffled into batches with a seeded RNG, so positives and negatives mix within a
  batch; the judgements come back in the original item order.
- `read_numbered_answers` reads numbered lines, JSON lists or objects, and yes/no/1/0/true/false
  amid prose; a snippet whose answer is missing, contradictory or unreadable gets None (counted as
  unparsed), and answers are never shifted onto another snippet.
- No logprobs: a list answer has no single yes/no token, so there is no AUROC in this mode.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Callable

from circuitflow.interp.metrics import binary_metrics

# How the reply format is taught: words, plus an example on made-up texts that no real batch
# could be mistaken for (no template with placeholders: weak models copy those verbatim).
REPLY_FORMAT = ("Reply with one line per text, in the order given: the text's number, a colon, and yes or no. "
                "Write nothing else.")

BATCHED_DETECTION_SYSTEM = (
    "You check whether a description of a language-model feature predicts where it activates. "
    "You see the description and several numbered texts. For each text, answer yes if the text contains "
    "what the description says the feature activates on, no otherwise. Judge every text on its own.\n\n"
    + REPLY_FORMAT + "\n\n"
    "For example, if the description were \"the word cat\" and the texts were\n"
    "Text 1: a cat sat on the mat\nText 2: the dog barked twice\nText 3: two cats were sleeping\n"
    "then the reply would be:\n1: yes\n2: no\n3: yes")

BATCHED_FUZZING_SYSTEM = (
    "You check whether a description of a language-model feature predicts where it activates. "
    "You see the description and several numbered texts. In each text, the tokens between << and >> are "
    "claimed to be where the feature activates. For each text, answer yes if the marked tokens fit the "
    "description, no otherwise. Judge every text on its own.\n\n"
    + REPLY_FORMAT + "\n\n"
    "For example, if the description were \"the word cat\" and the texts were\n"
    "Text 1: a <<cat>> sat on the mat\nText 2: the <<dog>> barked twice\nText 3: two <<cats>> were sleeping\n"
    "then the reply would be:\n1: yes\n2: no\n3: yes")

# A few tokens per answer line ("10: yes" and a newline is 4 to 6 tokens) plus headroom for a
# preamble some models write anyway.
TOKENS_PER_ANSWER = 6
ANSWER_HEADROOM_TOKENS = 16


def _batch_messages(system: str, description: str, texts: list[str], question: str) -> list[dict]:
    if not texts:
        raise ValueError("a batch needs at least one text")
    numbered = "\n\n".join(f"Text {i}:\n{text}" for i, text in enumerate(texts, 1))
    # The description comes before the texts so that every batch of one feature shares the
    # prefix up to "Text 1:"; only the closing line (which names the count) follows the texts.
    user = (f"Description: {description}\n\n{numbered}\n\n"
            f"{question} Answer for each of the {len(texts)} texts, one line each.")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def batched_detection_messages(description: str, texts: list[str]) -> list[dict]:
    return _batch_messages(BATCHED_DETECTION_SYSTEM, description, texts,
                           "Does the feature activate on each text?")


def batched_fuzzing_messages(description: str, highlighted_texts: list[str]) -> list[dict]:
    return _batch_messages(BATCHED_FUZZING_SYSTEM, description, highlighted_texts,
                           "Are the marked tokens of each text where the feature activates?")


def batch_answer_tokens(batch_size: int) -> int:
    """max_tokens for a batch of this size: a few tokens per answer line, plus headroom."""
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size} is below 1; set interp.scoring_batch_size to 1 or more")
    return TOKENS_PER_ANSWER * batch_size + ANSWER_HEADROOM_TOKENS


# --------------------------------------------------------------------------- reading replies

_WORDS = {"yes": True, "true": True, "y": True, "no": False, "false": False, "n": False}
_ANSWER_WORD = re.compile(r"\b(yes|no|true|false)\b", flags=re.IGNORECASE)
# A numbered label at the start of a line, or after a comma or semicolon ("1: yes, 2: no"):
# "1:", "1.", "1)", "1 -", "Text 1:", "#1 =", "**1.**", or a number right before the answer ("1 yes").
_LABEL = re.compile(r"(?:^|(?<=[,;]))[ \t*>#-]*(?:text|snippet|example)?[ \t]*#?(\d+)"
                    r"(?:[ \t*]*[:.)=\-][ \t*]*|[ \t]+(?=(?:yes|no|true|false)\b))",
                    flags=re.IGNORECASE | re.MULTILINE)
_NUMBER_KEYS = ("text", "number", "index", "id", "snippet", "example")
_BARE = re.compile(r"\b(yes|no|true|false|1|0)\b", flags=re.IGNORECASE)


def _value_answer(value) -> bool | None:
    """One answer from a JSON value: true/false, 1/0, "yes"/"no"/"1"/"0"."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return True if value == 1 else False if value == 0 else None
    if isinstance(value, str):
        return _text_answer(value)
    return None


def _text_answer(text: str) -> bool | None:
    """The answer in a piece of text: a leading 1/0 or y/n, else its first yes/no/true/false word."""
    bare = text.strip().strip(".*`'\"").strip().lower()
    if bare in _WORDS:
        return _WORDS[bare]
    digit = re.match(r"[\s*`'\"]*([01])(?!\d|\.\d)", text)
    if digit:
        return digit.group(1) == "1"
    found = _ANSWER_WORD.search(text)
    return _WORDS[found.group(1).lower()] if found else None


def _json_values(text: str):
    """The first JSON list or object in the reply (whole text, a fenced block, or a bracketed
    span), else None."""
    candidates = [text.strip()]
    candidates += re.findall(r"```(?:json|python)?\s*(.*?)```", text, flags=re.DOTALL)
    candidates += re.findall(r"\{.*\}", text, flags=re.DOTALL) + re.findall(r"\[[^\[\]]*\]", text)
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            try:  # a Python-style list: [True, False] or ['yes', 'no']
                value = json.loads(candidate.replace("'", '"').replace("True", "true").replace("False", "false"))
            except ValueError:
                continue
        if isinstance(value, (list, dict)):
            return value
    return None


def _from_json(value, n: int) -> list[bool | None] | None:
    if isinstance(value, dict):
        numbered = {k: v for k, v in value.items() if str(k).strip().isdigit()}
        if numbered:  # {"1": "yes", "2": "no"}: keyed by number, so nothing can shift
            answers: list[bool | None] = [None] * n
            for key, v in numbered.items():
                index = int(str(key).strip()) - 1
                if 0 <= index < n:
                    answers[index] = _value_answer(v)
            return answers
        lists = [v for v in value.values() if isinstance(v, (list, dict))]
        return _from_json(lists[0], n) if lists else None
    if isinstance(value, list):
        if all(isinstance(v, dict) for v in value) and value:
            # [{"text": 1, "answer": "yes"}, ...]: placed by the entry's number field
            answers = [None] * n
            for entry in value:
                number = next((entry[k] for k in _NUMBER_KEYS if isinstance(entry.get(k), int)), None)
                answer = next((entry[k] for k in entry if k not in _NUMBER_KEYS), None)
                if number is not None and 1 <= number <= n:
                    answers[number - 1] = _value_answer(answer)
            return answers
        # A bare list can only be placed by position: a list of the wrong length cannot say
        # which answer is missing, so none is used.
        return [_value_answer(v) for v in value] if len(value) == n else [None] * n
    return None


def read_numbered_answers(text: str, n: int) -> list[bool | None]:
    """One answer per snippet 1..n, from a reply in numbered lines ("1: yes"), inline ("1: yes,
    2: no"), a JSON list or object ({"answers": [1, 0]}, {"1": "yes"}), or exactly n bare answers
    and nothing else ("yes no yes"). Missing, unreadable or contradictory answers are None;
    answers are never shifted onto another snippet."""
    if n < 1:
        return []
    labels = list(_LABEL.finditer(text))
    if labels:
        said: dict[int, set] = {}
        for label, following in zip(labels, labels[1:] + [None]):
            number = int(label.group(1))
            segment = text[label.end():following.start() if following else len(text)]
            segment = segment.split("\n\n")[0]  # a blank line ends the answer (prose may follow)
            answer = _text_answer(segment)
            if 1 <= number <= n and answer is not None:
                said.setdefault(number, set()).add(answer)
        # A number answered both ways gets no answer rather than a guess.
        answers = [next(iter(said[i])) if len(said.get(i, ())) == 1 else None for i in range(1, n + 1)]
        if any(a is not None for a in answers):
            return answers
    value = _json_values(text)
    if value is not None:
        from_json = _from_json(value, n)
        if from_json is not None:
            return from_json
    # Bare answers in order ("yes\nno\nyes", "Answers: 1, 0, 1"): only when the reply is nothing
    # but answers (after an optional "Answers:" lead) and their count is exactly n.
    body = re.sub(r"^[^\n:]*:", "", text.strip(), count=1) if ":" in text else text
    if not _BARE.sub("", body).strip(" \t\n,;.[]()*-") and len(_BARE.findall(body)) == n:
        return [_text_answer(word) for word in _BARE.findall(body)]
    return [None] * n


# --------------------------------------------------------------------------- judging

def batches_of(n_items: int, batch_size: int, seed: int) -> list[list[int]]:
    """Item indices shuffled with `seed` and cut into batches of `batch_size` (the last shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size} is below 1; set interp.scoring_batch_size to 1 or more")
    order = list(range(n_items))
    random.Random(seed).shuffle(order)
    return [order[start:start + batch_size] for start in range(0, n_items, batch_size)]


async def judge_items_batched(client, messages_for_batch: Callable[[str, list[str]], list[dict]], description: str,
                              items: list[tuple[str, bool]], *, batch_size: int, max_tokens: int,
                              seed: int) -> dict:
    """Ask about every (text, label) item, `batch_size` snippets per request; the metrics (no
    AUROC: no logprobs here), each judgement in the items' order, and the number of requests."""
    batches = batches_of(len(items), batch_size, seed)
    replies = await asyncio.gather(*(
        client.complete(messages_for_batch(description, [items[i][0] for i in batch]), max_tokens=max_tokens,
                        json_mode=False)
        for batch in batches))
    predictions: list[bool | None] = [None] * len(items)
    for batch, reply in zip(batches, replies):
        for index, answer in zip(batch, read_numbered_answers(reply.text, len(batch))):
            predictions[index] = answer
    labels = [label for _, label in items]
    metrics = binary_metrics(labels, predictions, None)
    metrics["judgements"] = [{"label": y, "answer": p, "p_yes": None} for y, p in zip(labels, predictions)]
    metrics["n_requests"] = len(batches)
    return metrics
