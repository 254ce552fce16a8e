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
from circuitflow.features.ids import feature_file, feature_files
from circuitflow.interp import classify_features, explain_features, score_explanations, select_features
from circuitflow.interp.examples import explainer_examples, held_out_positives
from circuitflow.interp.judge_prompts import EXPLANATION_SYSTEM
from circuitflow.interp.labels import FeatureLabels, node_label
from circuitflow.interp.negatives import ActivationPool
from circuitflow.interp.reply_checks import unusable_reason
from circuitflow.interp.selection import load_selection

from ..llm_server import ScriptedServer
from .test_features import SETTINGS, tiny_setup  # noqa: F401  (the module fixture)

JUDGE = LLMSettings()


@pytest.fixture(scope="module")
def collected(tiny_setup, tiny_model_dir):  # noqa: F811
    settings = dataclasses.replace(SETTINGS, n_quantiles=2, examples_per_quantile=3, n_random=4)
    collect_features(model_dir=tiny_model_dir, transcoder_set=tiny_setup / "tc" / "config.yaml",
                     validation_split=tiny_setup / "validation.parquet", out_dir=tiny_setup / "json",
                     out_metadata=tiny_setup / "meta.json", settings=settings)
    select_features(feature_dir=tiny_setup / "json", metadata=tiny_setup / "meta.json", graphs=[],
                    out_selection=tiny_setup / "selection.json",
                    settings=SelectFeaturesSettings(sample_layers=(0, 1), n_per_layer=1, max_graph_features=0,
                                                    min_explainer_examples=3))
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
    classes = classify_features(selection=collected / "selection.json", feature_dir=collected / "json",
                                out_classifications=paths["classes.json"], out_usage=tmp_path / "c.usage.json",
                                cache_path=paths["cache.sqlite"], server_log=tmp_path / "c.judge.log",
                                settings=ClassifyFeaturesSettings(llm=JUDGE, explainer_examples=5))
    assert len(classes["features"]) == 2 and "SmolLM2" in classes["metadata"]["model"]
    assert all(r["category"] in (*ClassifyFeaturesSettings().categories, "unparsed") for r in classes["features"])
    explained = explain_features(selection=collected / "selection.json", feature_dir=collected / "json",
                                 out_explanations=paths["autointerp.json"], out_usage=tmp_path / "e.usage.json",
                                 cache_path=paths["cache.sqlite"], server_log=tmp_path / "e.judge.log",
                                 settings=ExplainFeaturesSettings(llm=JUDGE, explainer_examples=5))
    assert all(r["description"] or r["raw_reply"] for r in explained["features"])
    # the real local judge: whatever it wrote, no kept description is an echo or a placeholder
    for record in explained["features"]:
        if record["description"]:
            assert unusable_reason(record["description"], EXPLANATION_SYSTEM) is None, record
            assert record["description"].strip(" .") and "..." not in record["description"]
        else:
            assert record["unusable_reason"], record
    settings = ScoreExplanationsSettings(llm=JUDGE, positives=2, negatives=2, negative_pool_windows=8,
                                         context_before=6, context_after=2, device="cpu")
    scored = score_explanations(selection=collected / "selection.json", explanations=paths["autointerp.json"],
                                feature_dir=collected / "json", validation=collected / "validation.parquet",
                                model_dir=tiny_model_dir, transcoder_set=collected / "tc" / "config.yaml",
                                out_scores=paths["scores.json"], out_usage=tmp_path / "s.usage.json",
                                cache_path=paths["cache.sqlite"], server_log=tmp_path / "s.judge.log", unit="features",
                                settings=settings)
    assert scored["metadata"]["n_scored"] == 2
    detection = scored["summary"]["overall"]["trivial"]["detection"]
    assert detection["n"] == 8 and detection["auroc"] is not None  # llama.cpp returns logprobs
    assert detection["interval"]["balanced_accuracy"] is not None  # two features: a bootstrap interval
    embedding = scored["summary"]["overall"]["trivial"]["embedding"]
    assert embedding["n"] == 8 and embedding["n_features"] == 2 and "MiniLM" in scored["metadata"]["embedding_model"]
    usage = json.loads((tmp_path / "s.usage.json").read_text())
    assert usage["requests"] > 0 and usage["failed_requests"] == 0
    # a rerun sends nothing: every reply comes from the cache
    score_explanations(selection=collected / "selection.json", explanations=paths["autointerp.json"],
                       feature_dir=collected / "json", validation=collected / "validation.parquet",
                       model_dir=tiny_model_dir, transcoder_set=collected / "tc" / "config.yaml",
                       out_scores=tmp_path / "again.json", out_usage=tmp_path / "again.usage.json",
                       cache_path=paths["cache.sqlite"], server_log=tmp_path / "s.judge.log", unit="features",
                       settings=settings)
    again = json.loads((tmp_path / "again.usage.json").read_text())
    assert again["requests"] == 0 and again["cache_hits"] == usage["requests"] - usage["retries"]
    assert json.loads((tmp_path / "again.json").read_text())["features"] == scored["features"]


def test_graph_features_token_labels_get_embedding_scores_without_a_chat_model(collected, tiny_model_dir, tmp_path):
    """Graph feature nodes the judge never sees: their token labels are scored by embedding on
    held-out positives and verified negatives, capped at interp.embedding_graph_features (most
    influential first), and the node's label shows that score. No chat request is sent."""
    selection = json.loads((collected / "selection.json").read_text())
    judged = {f["cantor_id"] for f in selection["features"]}
    ranked = sorted(int(p.stem) for p in feature_files(collected / "json") if int(p.stem) not in judged)[:6]
    (tmp_path / "selection.json").write_text(json.dumps({**selection, "features": [], "graph_features": ranked}))
    (tmp_path / "autointerp.json").write_text(json.dumps({"features": []}))
    server = ScriptedServer(default=lambda body: ("reply", "no"))
    try:
        settings = ScoreExplanationsSettings(
            llm=LLMSettings(base_url=server.base_url, model="judge", api_key_env=None), positives=2, negatives=2,
            negative_pool_windows=8, context_before=6, context_after=2, device="cpu", embedding_graph_features=4)
        scored = score_explanations(selection=tmp_path / "selection.json", explanations=tmp_path / "autointerp.json",
                                    feature_dir=collected / "json", validation=collected / "validation.parquet",
                                    model_dir=tiny_model_dir, transcoder_set=collected / "tc" / "config.yaml",
                                    out_scores=tmp_path / "scores.json", out_usage=tmp_path / "usage.json",
                                    cache_path=tmp_path / "cache.sqlite", server_log=tmp_path / "judge.log",
                                    unit="features", settings=settings)
    finally:
        server.close()
    assert server.requests == [] and json.loads((tmp_path / "usage.json").read_text())["requests"] == 0
    graph = scored["graph_token_labels"]
    assert 0 < len(graph["features"]) <= 4  # the cap: the 4 most influential (fewer if one has no negative)
    assert {r["cantor_id"] for r in graph["features"]} <= set(ranked[:4])
    for record in graph["features"]:
        embedding = record["scores"]["trivial"]["embedding"]
        assert embedding["n_positive"] == record["n_positives"] > 0 and embedding["n_negative"] == record["n_negatives"] > 0
        assert 0.0 <= embedding["auroc"] <= 1.0
    assert graph["summary"]["n_features"] == len(graph["features"])
    labels = FeatureLabels.load(None, None, tmp_path / "scores.json")
    record = graph["features"][0]
    feature = json.loads(feature_file(collected / "json", record["cantor_id"]).read_text())
    fields = labels.fields(record["cantor_id"], feature)
    assert fields["explanation_source"] == "trivial" and "detection_score" not in fields
    assert fields["embedding_score"] == record["scores"]["trivial"]["embedding"]["auroc"]
    assert fields["explanation"] == record["scores"]["trivial"]["description"]
    assert node_label(fields).endswith(f"[embedding {fields['embedding_score']:.2f}]")
