"""The judge's stages end to end on the tiny model's features, through the real llama.cpp
server on SmolLM2 (the default judge): selection, classification, explanation, scoring with
negatives mined from the validation split, and the rerun from the cache."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from circuitflow.config import (
    ClassifyFeaturesSettings,
    ExplainFeaturesSettings,
    LLMSettings,
    ScoreExplanationsSettings,
    SelectFeaturesSettings,
)
from circuitflow.features import collect_features
from circuitflow.interp import classify_features, explain_features, score_explanations, select_features
from circuitflow.interp.examples import explainer_examples, held_out_positives
from circuitflow.interp.negatives import ActivationPool
from circuitflow.interp.selection import load_selection

from .test_features import SETTINGS, tiny_setup  # noqa: F401  (the module fixture)

JUDGE = LLMSettings(max_tokens=96)


@pytest.fixture(scope="module")
def collected(tiny_setup, tiny_model_dir):  # noqa: F811
    settings = dataclasses.replace(SETTINGS, n_quantiles=2, examples_per_quantile=3, n_random=4)
    collect_features(tiny_model_dir, tiny_setup / "tc" / "config.yaml", tiny_setup / "validation.parquet",
                     tiny_setup / "json", tiny_setup / "meta.json", settings)
    select_features(tiny_setup / "json", tiny_setup / "meta.json", [], tiny_setup / "selection.json",
                    SelectFeaturesSettings(sample_layers=(0, 1), n_per_layer=1, max_graph_features=0, min_explainer_examples=3))
    return tiny_setup


def test_negatives_are_verified_zero_and_shaped_like_positives(collected, tiny_model_dir):
    items = load_selection(collected / "selection.json", collected / "json")
    wanted = {}
    for entry, _ in items:
        wanted.setdefault(entry["layer"], []).append(entry["feature"])
    pool = ActivationPool(tiny_model_dir, collected / "validation.parquet", "features",
                          collected / "tc" / "config.yaml", wanted, 8, 256, 0, "float32", "cpu")
    for entry, feature in items:
        positives = held_out_positives(feature, 3, explainer_examples(feature, 5), seed=0)
        negatives = pool.negatives(entry["layer"], entry["feature"], positives, 4, 0.5, feature, seed=0)
        assert negatives
        for i, negative in enumerate(negatives):
            shape = positives[i % len(positives)]
            assert len(negative.tokens) == len(shape.tokens) and negative.peak == shape.peak
            assert max(negative.acts) <= 0.0  # re-computed by the model + transcoder, not assumed
        assert {n.key for n in negatives}.isdisjoint({p.key for p in positives})
        assert np.all(pool.acts[(entry["layer"], entry["feature"])][:, 0] == 0)  # BOS never fires


def test_smollm2_classifies_explains_and_scores(collected, tiny_model_dir, tmp_path):
    paths = {name: tmp_path / name for name in ("classes.json", "autointerp.json", "scores.json", "cache.sqlite")}
    classes = classify_features(collected / "selection.json", collected / "json", paths["classes.json"],
                                tmp_path / "c.usage.json", paths["cache.sqlite"], tmp_path / "c.judge.log",
                                ClassifyFeaturesSettings(llm=JUDGE, explainer_examples=5))
    assert len(classes["features"]) == 2 and "SmolLM2" in classes["metadata"]["model"]
    assert all(r["category"] in (*ClassifyFeaturesSettings().categories, "unparsed") for r in classes["features"])
    explained = explain_features(collected / "selection.json", collected / "json", paths["autointerp.json"],
                                 tmp_path / "e.usage.json", paths["cache.sqlite"], tmp_path / "e.judge.log",
                                 ExplainFeaturesSettings(llm=JUDGE, explainer_examples=5))
    assert all(r["description"] or r["raw_reply"] for r in explained["features"])
    settings = ScoreExplanationsSettings(llm=JUDGE, positives=2, negatives=2, negative_pool_windows=8,
                                         context_before=6, context_after=2, device="cpu")
    scored = score_explanations(collected / "selection.json", paths["autointerp.json"], collected / "json",
                                collected / "validation.parquet", tiny_model_dir, collected / "tc" / "config.yaml",
                                paths["scores.json"], tmp_path / "s.usage.json", paths["cache.sqlite"],
                                tmp_path / "s.judge.log", "features", settings)
    assert scored["metadata"]["n_scored"] == 2
    detection = scored["summary"]["overall"]["trivial"]["detection"]
    assert detection["n"] == 8 and detection["auroc"] is not None  # llama.cpp returns logprobs
    usage = json.loads((tmp_path / "s.usage.json").read_text())
    assert usage["requests"] > 0 and usage["failed_requests"] == 0
    # a rerun sends nothing: every reply comes from the cache
    score_explanations(collected / "selection.json", paths["autointerp.json"], collected / "json",
                       collected / "validation.parquet", tiny_model_dir, collected / "tc" / "config.yaml",
                       tmp_path / "again.json", tmp_path / "again.usage.json", paths["cache.sqlite"],
                       tmp_path / "s.judge.log", "features", settings)
    again = json.loads((tmp_path / "again.usage.json").read_text())
    assert again["requests"] == 0 and again["cache_hits"] == usage["requests"] - usage["retries"]
    assert json.loads((tmp_path / "again.json").read_text())["features"] == scored["features"]
