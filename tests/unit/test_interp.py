"""The LLM judge's stages on synthetic features, against a real loopback HTTP server with
scripted replies: the planted-oracle proof of the scorer, metrics computed by hand, the
selection, disjoint explainer/scoring examples, reply parsing and failure accounting."""

from __future__ import annotations

import asyncio
import json
import math
import re

import numpy as np
import pytest

from circuitflow.config import ClassifyFeaturesSettings, ExplainFeaturesSettings, LLMSettings, ScoreExplanationsSettings
from circuitflow.config import SelectFeaturesSettings
from circuitflow.features.ids import cantor, feature_files
from circuitflow.interp import classify_features, explain_features, select_features
from circuitflow.interp.examples import Snippet, explainer_examples, held_out_positives, trivial_explanation
from circuitflow.interp.labels import FeatureLabels, node_label
from circuitflow.interp.metrics import auroc, binary_metrics
from circuitflow.interp.score import read_answer, score_one, yes_probability
from circuitflow.llm import LLMClient, LLMError, open_judge

from ..conftest import placed
from ..llm_server import ScriptedServer


def llm(base_url, **changes) -> LLMSettings:
    return LLMSettings(**{"base_url": base_url, "model": "judge", "api_key_env": None, "max_retries": 0,
                          "timeout_s": 5.0, "backoff_s": 0.01, "max_concurrency": 4, **changes})


def snip(text: str) -> Snippet:
    tokens = tuple(re.findall(r"\s*\S+", text))
    return Snippet(tokens, tuple(1.0 if any(c.isdigit() for c in t) else 0.0 for t in tokens), 0)


# Positives fire on digits; half of each class mentions a cat, so a "cat" explanation is chance.
POSITIVES = [snip(t) for t in ["he paid 12 dollars", "a cat ate 3 fish", "in 1999 we met", "my cat is 7 now",
                               "room 42 is free", "the cat weighs 5 kilos"]]
NEGATIVES = [snip(t) for t in ["she sang a song", "a cat sat down", "we met at noon", "my cat sleeps a lot",
                               "the room is free", "the cat is grey"]]
RULES = {"numbers written with digits": lambda text: any(c.isdigit() for c in text),
         "the word cat": lambda text: "cat" in text}


def oracle(answer_for):
    """A responder that applies the explanation's true rule to the snippet of each request."""
    def respond(body):
        user = body["messages"][-1]["content"]
        description = re.search(r"Description: (.*)\n\nText: ", user).group(1)
        text = re.search(r"Text: (.*)\n\n", user, flags=re.DOTALL).group(1).replace("<<", "").replace(">>", "")
        yes = answer_for(description, text)
        return ("reply", "Yes" if yes else "No", {"Yes": math.log(0.9 if yes else 0.2),
                                                  "No": math.log(0.1 if yes else 0.8)})
    return respond


def run_scoring(server, descriptions, fuzzing=False):
    settings = ScoreExplanationsSettings(llm=llm(server.base_url), fuzzing=fuzzing)

    async def go(tmp):
        client = LLMClient(settings.llm, tmp)
        try:
            return await score_one(client, descriptions, POSITIVES, NEGATIVES, settings, np.random.default_rng(0))
        finally:
            await client.aclose()
    return go


def test_planted_oracle_true_wrong_and_always_yes(tmp_path):
    server = ScriptedServer(default=oracle(lambda description, text: RULES[description](text)))
    try:
        scores = asyncio.run(run_scoring(server, {"true": "numbers written with digits", "wrong": "the word cat"},
                                         fuzzing=True)(tmp_path / "cache.sqlite"))
    finally:
        server.close()
    true, wrong = scores["true"]["detection"], scores["wrong"]["detection"]
    # by hand: the true rule answers yes on all 6 positives, no on all 6 negatives
    assert (true["tp"], true["fp"], true["tn"], true["fn"]) == (6, 0, 6, 0)
    assert true["balanced_accuracy"] == 1.0 and true["f1"] == 1.0 and true["auroc"] == 1.0
    # "cat" is in 3 of 6 positives and 3 of 6 negatives: TPR 0.5, TNR 0.5
    assert (wrong["tp"], wrong["fp"], wrong["tn"], wrong["fn"]) == (3, 3, 3, 3)
    assert wrong["balanced_accuracy"] == 0.5 and wrong["precision"] == 0.5 and wrong["auroc"] == 0.5
    # fuzzing: correct highlights on positives (digits) vs random highlights on negatives
    assert scores["true"]["fuzzing"]["balanced_accuracy"] == 1.0


def test_an_always_yes_judge_scores_exactly_chance(tmp_path):
    server = ScriptedServer(default=("reply", "yes"))
    try:
        scores = asyncio.run(run_scoring(server, {"true": "numbers written with digits"})(tmp_path / "c.sqlite"))
    finally:
        server.close()
    detection = scores["true"]["detection"]
    assert detection["balanced_accuracy"] == 0.5 and detection["recall"] == 1.0
    assert detection["precision"] == 0.5 and detection["tn"] == 0
    assert detection["auroc"] == 0.5  # every snippet got P(yes) = 1: all ties


def test_metrics_by_hand():
    labels = [True, True, True, False, False]
    said = [True, False, None, True, False]
    m = binary_metrics(labels, said, [0.9, 0.4, 0.3, 0.6, 0.1])
    assert (m["tp"], m["fn"], m["fp"], m["tn"], m["n_unparsed"]) == (1, 2, 1, 1, 1)
    assert m["balanced_accuracy"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert m["precision"] == 0.5 and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    # pairs (pos, neg): 0.9 beats both, 0.4 beats 0.1 only, 0.3 beats 0.1 only -> 4 of 6
    assert m["auroc"] == pytest.approx(4 / 6)
    assert auroc([True, False], [0.5, 0.5]) == 0.5 and auroc([True], [1.0]) is None


def test_answers_and_probabilities():
    assert read_answer("Yes.") is True and read_answer(" no, because") is False and read_answer("maybe") is None
    assert yes_probability({"Yes": math.log(0.6), " yes": math.log(0.2), "No": math.log(0.2)}) == pytest.approx(0.8)
    assert yes_probability({"Maybe": 0.0}) is None and yes_probability(None) is None


# --------------------------------------------------------------------------- synthetic features


def example(text: str, peak: int, act: float) -> dict:
    tokens = re.findall(r"\s*\S+", text)
    acts = [0.0] * len(tokens)
    acts[peak] = act
    return {"tokens": tokens, "tokens_acts_list": acts, "train_token_ind": peak, "is_repeated_datapoint": False}


def write_feature(folder, layer, feature, n_top=6, n_quantile=4, freq=0.01):
    top = [example(f"top example {i} of {feature} fires here", 5, 10.0 - i) for i in range(n_top)]
    low = [example(f"weaker case {i} of {feature} fires there", 5, 2.0 - 0.1 * i) for i in range(n_quantile)]
    data = {"index": cantor(layer, feature), "layer": layer, "feature": feature, "activation_frequency": freq,
            "top_logits": [" here", " there"],
            "examples_quantiles": [{"quantile_name": "Top activations", "examples": top},
                                   {"quantile_name": "Quantile 0-33% (activation 0.1-2.0)", "examples": low},
                                   {"quantile_name": "Random samples", "examples": top[:2] + low[:1]}]}
    placed(folder, data["index"]).write_text(json.dumps(data))
    return {"layer": layer, "feature": feature, "cantor_id": data["index"], "activation_freq": freq}


@pytest.fixture
def feature_dir(tmp_path):
    folder = tmp_path / "json"
    folder.mkdir()
    entries = [write_feature(folder, layer, f) for layer in (0, 1) for f in range(6)]
    entries.append(write_feature(folder, 1, 9, n_top=2))  # too few examples for the judge
    (tmp_path / "meta.json").write_text(json.dumps({"kind": "transcoder", "features": entries}))
    graph = {"nodes": [{"feature": cantor(1, 9), "feature_type": "cross layer transcoder", "influence": 0.05},
                       {"feature": cantor(0, 4), "feature_type": "cross layer transcoder", "influence": 0.3},
                       {"feature": cantor(0, 4), "feature_type": "cross layer transcoder", "influence": 0.1},
                       {"feature": cantor(1, 2), "feature_type": "cross layer transcoder", "influence": 0.2},
                       {"feature": -1, "feature_type": "embedding", "influence": 0.01}]}
    (tmp_path / "g.json").write_text(json.dumps(graph))
    return folder


def test_selection_samples_per_layer_adds_graph_nodes_and_counts_skips(feature_dir, tmp_path):
    settings = SelectFeaturesSettings(sample_layers=(0, 1), n_per_layer=2, max_graph_features=2, min_explainer_examples=5)
    out = tmp_path / "selection.json"
    result = select_features(feature_dir=feature_dir, metadata=tmp_path / "meta.json", graphs=[tmp_path / "g.json"],
                             out_selection=out, settings=settings)
    graph = [f for f in result["features"] if "graph" in f["selected_by"]]
    # L1F9 is the most influential node but has 2 top examples: skipped, counted; then L0F4 (0.1), L1F2
    assert [(f["layer"], f["feature"]) for f in sorted(graph, key=lambda f: f["graph_influence"])] == [(0, 4), (1, 2)]
    assert result["skipped"][0]["cantor_id"] == cantor(1, 9) and "2 top examples" in result["skipped"][0]["reason"]
    assert sum("sample" in f["selected_by"] for f in result["features"]) == 4
    # every graph feature, most influential first, for the token labels' embedding scores
    assert result["graph_features"] == [cantor(1, 9), cantor(0, 4), cantor(1, 2)]
    again = select_features(feature_dir=feature_dir, metadata=tmp_path / "meta.json", graphs=[tmp_path / "g.json"],
                            out_selection=tmp_path / "again.json", settings=settings)
    assert again["features"] == result["features"]  # seeded


def test_scoring_positives_never_repeat_what_the_explainer_saw(feature_dir):
    feature = json.loads(placed(feature_dir, cantor(0, 1)).read_text())
    shown = explainer_examples(feature, 6)
    positives = held_out_positives(feature, 5, shown, seed=0)
    assert positives and not {s.key for s in shown} & {s.key for s in positives}
    assert all("weaker" in s.text for s in positives)  # the random samples repeating top examples are skipped
    assert trivial_explanation(feature) == 'Fires on the tokens " fires"; promotes " here", " there".'


def classification_reply(body):
    user = body["messages"][1]["content"]  # the question (a re-ask appends to it)
    if "L0F0:" in user:
        return ("reply", "I cannot decide")  # garbage, and again when re-asked: kept raw
    if "L0F2:" in user:
        return ("reply", '{"reasoning": "commas", "category": "language", "confidence": "hi')  # cut off
    if "L1F3" in user:
        return ("status", 500, {}, {"error": {"message": "backend exploded"}})
    return ("reply", json.dumps({"reasoning": "r", "category": "Domain", "confidence": "high",
                                 "domain_type": "code", "mechanism": "output", "category_description": "d"}))


def test_classification_parses_keeps_raw_and_records_failures(feature_dir, tmp_path):
    select_features(feature_dir=feature_dir, metadata=tmp_path / "meta.json", graphs=[],
                    out_selection=tmp_path / "sel.json",
                    settings=SelectFeaturesSettings(sample_layers=(0, 1), n_per_layer=6, max_graph_features=0))
    server = ScriptedServer(default=classification_reply)
    try:
        settings = ClassifyFeaturesSettings(llm=llm(server.base_url, max_failure_share=0.5))
        result = classify_features(selection=tmp_path / "sel.json", feature_dir=feature_dir,
                                   out_classifications=tmp_path / "classes.json", out_usage=tmp_path / "usage.json",
                                   cache_path=tmp_path / "cache.sqlite", server_log=tmp_path / "judge.log",
                                   settings=settings)
    finally:
        server.close()
    records = {(r["layer"], r["feature"]): r for r in result["features"]}
    assert result["metadata"]["failed"][0]["cantor_id"] == cantor(1, 3)
    assert "backend exploded" in result["metadata"]["failed"][0]["error"]
    assert records[(0, 0)]["category"] == "unparsed" and records[(0, 0)]["raw_reply"] == "I cannot decide"
    good = records[(0, 1)]
    assert good["category"] == "domain" and good["domain_type"] == "code" and good["mechanism"] is None
    cut_off = records[(0, 2)]
    assert cut_off["category"] == "language" and cut_off["salvaged"] and cut_off["confidence"] is None
    shares = result["shares"]["overall"]  # 12 selected, 1 failed, 1 unparsed, 1 salvaged
    assert shares["domain"] == pytest.approx(9 / 11) and shares["language"] == pytest.approx(1 / 11)
    usage = json.loads((tmp_path / "usage.json").read_text())
    assert usage["reasks"] == 2 and usage["unparsed_replies"] == 2 and usage["failed_requests"] == 1


def test_category_names_with_capitals_match_the_reply_in_any_case(feature_dir, tmp_path):
    """Configured "Math"/"Code" (capitals) match replies "math" and "CODE"; names that differ only
    in case are refused before any request, at parse time and here."""
    from circuitflow.config_rules import ConfigError

    select_features(feature_dir=feature_dir, metadata=tmp_path / "meta.json", graphs=[],
                    out_selection=tmp_path / "sel.json",
                    settings=SelectFeaturesSettings(sample_layers=(0, 1), n_per_layer=1, max_graph_features=0))

    def reply(body):
        category = "math" if "L0F" in body["messages"][1]["content"] else "CODE"
        return ("reply", json.dumps({"reasoning": "r", "category": category, "confidence": "High",
                                     "category_description": "d"}))

    categories = {"Math": "mathematics", "Code": "programming"}
    server = ScriptedServer(default=reply)
    try:
        result = classify_features(selection=tmp_path / "sel.json", feature_dir=feature_dir,
                                   out_classifications=tmp_path / "classes.json", out_usage=tmp_path / "usage.json",
                                   cache_path=tmp_path / "cache.sqlite", server_log=tmp_path / "judge.log",
                                   settings=ClassifyFeaturesSettings(llm=llm(server.base_url), categories=categories))
        assert sorted(r["category"] for r in result["features"]) == ["Code", "Math"]
        assert {r["confidence"] for r in result["features"]} == {"high"}
        assert result["shares"]["overall"]["Math"] == 0.5 and result["metadata"]["n_unparsed"] == 0
        sent = len(server.requests)
        with pytest.raises(ConfigError, match="'Math' and 'math', which differ only in case"):
            classify_features(selection=tmp_path / "sel.json", feature_dir=feature_dir,
                               out_classifications=tmp_path / "again.json", out_usage=tmp_path / "u2.json",
                               cache_path=tmp_path / "cache.sqlite", server_log=tmp_path / "judge.log",
                               settings=ClassifyFeaturesSettings(llm=llm(server.base_url),
                                                                 categories={**categories, "math": "again"}))
        assert len(server.requests) == sent and not (tmp_path / "again.json").exists()
    finally:
        server.close()


def run_explain(server, feature_dir, tmp_path) -> dict:
    """explain_features on tmp_path/sel.json against `server` (closed afterwards)."""
    try:
        return explain_features(selection=tmp_path / "sel.json", feature_dir=feature_dir,
                                out_explanations=tmp_path / "autointerp.json", out_usage=tmp_path / "usage.json",
                                cache_path=tmp_path / "cache.sqlite", server_log=tmp_path / "judge.log",
                                settings=ExplainFeaturesSettings(llm=llm(server.base_url)))
    finally:
        server.close()


def test_explanations_drop_markers_and_fall_back_to_the_trivial_one(feature_dir, tmp_path):
    select_features(feature_dir=feature_dir, metadata=tmp_path / "meta.json", graphs=[],
                    out_selection=tmp_path / "sel.json",
                    settings=SelectFeaturesSettings(sample_layers=(0, 1), n_per_layer=1, max_graph_features=0))
    server = ScriptedServer(default=("reply", '{"reasoning": "x", "description": "the token <<<here>>> at the end"}'))
    result = run_explain(server, feature_dir, tmp_path)
    assert [r["description"] for r in result["features"]] == ["the token here at the end"] * 2
    labels = FeatureLabels.load(tmp_path / "autointerp.json", None, None)
    record = result["features"][0]
    feature = json.loads(placed(feature_dir, record['cantor_id']).read_text())
    # explained but not scored: no evidence that it beats the token label, so the token label shows
    fields = labels.fields(record["cantor_id"], feature)
    assert fields["explanation_source"] == "trivial" and fields["explanation"] == trivial_explanation(feature)
    assert fields["llm_explanation"] == "the token here at the end"
    assert fields["label_rule"] == "LLM explanation not scored against the token label"
    explained = {r["cantor_id"] for r in result["features"]}
    unexplained = min(int(path.stem) for path in feature_files(feature_dir) if int(path.stem) not in explained)
    other = json.loads(placed(feature_dir, unexplained).read_text())
    fields = labels.fields(unexplained, other)
    assert fields["explanation_source"] == "trivial" and node_label(fields) == trivial_explanation(other)


def test_a_remote_judge_without_its_key_fails_before_any_request(tmp_path, monkeypatch):
    monkeypatch.delenv("CIRCUITFLOW_TEST_KEY", raising=False)
    settings = llm("https://api.example.com/v1", api_key_env="CIRCUITFLOW_TEST_KEY")

    async def go():
        async with open_judge(settings, tmp_path / "cache.sqlite", tmp_path / "judge.log"):
            pass
    with pytest.raises(LLMError, match="CIRCUITFLOW_TEST_KEY"):
        asyncio.run(go())
    assert not (tmp_path / "cache.sqlite").exists()


@pytest.mark.parametrize("llm_score,token_score,shown", [
    (0.75, 0.5, "llm"),      # beat the token label on the same snippets, above chance
    (0.625, 0.625, "trivial"),  # a tie goes to the token label
    (0.5, 0.375, "trivial"),  # better than the token label, but at chance
    (0.5, 0.75, "trivial"),
])
def test_an_llm_label_is_shown_only_where_it_beat_the_token_label(llm_score, token_score, shown):
    from circuitflow.interp.labels import label_choice

    scored = {"llm": {"detection": {"balanced_accuracy": llm_score}},
              "trivial": {"detection": {"balanced_accuracy": token_score}}}
    source, reason = label_choice("digits in prices", scored)
    assert source == shown and f"{llm_score:.3f} vs token label {token_score:.3f}" in reason
    assert label_choice(None, scored)[0] == "trivial"
    assert label_choice("digits in prices", {"llm": scored["llm"]})[0] == "trivial"  # no paired score


@pytest.mark.parametrize("first,second,described,reason", [
    # an echo of the instructions is re-asked once; a usable second reply is kept
    ('{"description": "a phrase of 5 to 15 words in your own words that names the common pattern"}',
     '{"description": "digits inside prices and dates"}', "digits inside prices and dates", None),
    # a copied placeholder, then an empty description: no LLM description, the reason is kept
    ('{"description": "..."}', '{"description": ""}', None, "empty"),
    ('{"description": "..."}', '{"description": "tokens"}', None, "shorter than 3 words"),
])
def test_echoed_or_placeholder_explanations_are_reasked_then_rejected(feature_dir, tmp_path, caplog, first, second,
                                                                      described, reason):
    caplog.set_level("INFO", logger="circuitflow.interp")
    select_features(feature_dir=feature_dir, metadata=tmp_path / "meta.json", graphs=[],
                    out_selection=tmp_path / "sel.json",
                    settings=SelectFeaturesSettings(sample_layers=(0,), n_per_layer=1, max_graph_features=0))

    def reply(body):  # the re-ask is the request that carries the first reply back
        return ("reply", second if body["messages"][-1]["role"] == "user" and len(body["messages"]) > 2 else first)

    server = ScriptedServer(default=reply)
    result = run_explain(server, feature_dir, tmp_path)
    record = result["features"][0]
    assert record["description"] == described
    assert record.get("unusable_reason") == reason
    assert len(server.requests) == 2  # asked, then re-asked once
    assert "cannot be used" in server.requests[1]["messages"][-1]["content"]
    usage = json.loads((tmp_path / "usage.json").read_text())
    assert usage["reasks"] == 1 and usage["unusable_replies"] == (0 if described else 1)
    # the schema travels with the request (llm.json_schema) and no prompt holds a placeholder
    assert server.requests[0]["response_format"]["json_schema"]["schema"]["required"] == ["description"]
    assert not any("..." in m["content"] or "<what" in m["content"] for m in server.requests[0]["messages"])
    # the cost estimate is logged before the first request (no prices configured here)
    assert any(r.message.startswith("explain: planned 1 requests") and "prices not set" in r.message
               for r in caplog.records)


def test_unusable_reasons():
    from circuitflow.interp.judge_prompts import EXPLANATION_SYSTEM
    from circuitflow.interp.reply_checks import unusable_reason

    assert unusable_reason("...", EXPLANATION_SYSTEM).startswith("no words")
    assert unusable_reason("The token and its context, in 5-15 words.",
                           "Describe what makes it activate: the token and its context, in 5-15 words.") \
        == "restates the instructions"
    assert unusable_reason("the word cat after a determiner", EXPLANATION_SYSTEM) is None
