"""Bootstrap intervals of the pooled explanation scores (uncertainty.py) on judgements whose truth
is known, and the headline scores table (compare_explanations) built from hand-written score files."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from circuitflow.interp.compare import compare_explanations
from circuitflow.interp.metrics import auroc, binary_metrics
from circuitflow.interp.uncertainty import _pooled_statistics, bootstrap_intervals, pooled_intervals
from circuitflow.report.inputs import read_interp_summary
from circuitflow.report.tables import interp_scores_table


def coin_flip_features(n_features: int, per_feature: int, seed: int) -> list[list[dict]]:
    """A scorer that answers at random: half positives, half negatives per feature."""
    rng = np.random.default_rng(seed)
    return [[{"label": k % 2 == 0, "answer": bool(rng.random() < 0.5), "p_yes": float(rng.random())}
             for k in range(per_feature)] for _ in range(n_features)]


def width(interval: list[float]) -> float:
    return interval[1] - interval[0]


# --- bootstrap_intervals ---------------------------------------------------------------------

def test_a_perfect_scorer_has_the_interval_one_to_one():
    features = [[{"label": k % 2 == 0, "answer": k % 2 == 0, "p_yes": 0.9 if k % 2 == 0 else 0.1}
                 for k in range(6)] for _ in range(5)]
    assert bootstrap_intervals(features, statistic="binary") == {
        "balanced_accuracy": [1.0, 1.0], "f1": [1.0, 1.0], "auroc": [1.0, 1.0]}
    similar = [[{"label": k < 3, "similarity": 0.8 if k < 3 else 0.2} for k in range(6)] for _ in range(5)]
    assert bootstrap_intervals(similar, statistic="similarity") == {"auroc": [1.0, 1.0]}


def test_a_coin_flip_scorer_sits_at_chance_and_more_features_narrow_the_interval():
    few = bootstrap_intervals(coin_flip_features(20, 10, seed=1), statistic="binary")
    many = bootstrap_intervals(coin_flip_features(400, 10, seed=2), statistic="binary")
    for metric in ("balanced_accuracy", "auroc"):
        assert few[metric][0] < 0.5 < few[metric][1], (metric, few)
        assert many[metric][0] < 0.5 < many[metric][1], (metric, many)
        # the interval shrinks like 1/sqrt(n): 20x the features, about 4.5x narrower
        assert width(many[metric]) < width(few[metric]) / 3, (metric, few, many)
    rng = np.random.default_rng(3)
    similar = [[{"label": k % 2 == 0, "similarity": float(rng.random())} for k in range(10)] for _ in range(200)]
    interval = bootstrap_intervals(similar, statistic="similarity")["auroc"]
    assert interval[0] < 0.5 < interval[1] and width(interval) < 0.1


def test_features_are_resampled_not_only_snippets():
    """Half the features always right, half always wrong: pooled at chance, but which features were
    picked dominates the error, so the interval is far wider than for coin flips within features."""
    right = [{"label": k % 2 == 0, "answer": k % 2 == 0, "p_yes": None} for k in range(10)]
    wrong = [{"label": k % 2 == 0, "answer": k % 2 != 0, "p_yes": None} for k in range(10)]
    split = bootstrap_intervals([right, wrong] * 10, statistic="binary")["balanced_accuracy"]
    mixed = bootstrap_intervals(coin_flip_features(20, 10, seed=4), statistic="binary")["balanced_accuracy"]
    assert split[0] < 0.5 < split[1]
    assert width(split) > 1.5 * width(mixed)


def test_snippets_are_resampled_within_each_feature():
    """Identical features: resampling features alone would give a zero-width interval."""
    one = coin_flip_features(1, 40, seed=5)[0]
    interval = bootstrap_intervals([one] * 10, statistic="binary")["balanced_accuracy"]
    assert width(interval) > 0.05


def test_the_same_seed_gives_the_same_interval_and_another_seed_another():
    features = coin_flip_features(30, 8, seed=6)
    first = bootstrap_intervals(features, statistic="binary", seed=7)
    assert bootstrap_intervals(features, statistic="binary", seed=7) == first
    assert bootstrap_intervals(features, statistic="binary", seed=8) != first


def test_a_wider_level_gives_a_wider_interval():
    features = coin_flip_features(30, 8, seed=9)
    narrow = bootstrap_intervals(features, statistic="binary", level=0.5)["balanced_accuracy"]
    wide = bootstrap_intervals(features, statistic="binary", level=0.99)["balanced_accuracy"]
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


def test_fewer_than_two_features_or_no_judgements_give_no_interval():
    one = coin_flip_features(1, 20, seed=10)
    assert bootstrap_intervals(one, statistic="binary") == {"balanced_accuracy": None, "f1": None, "auroc": None}
    assert bootstrap_intervals([], statistic="similarity") == {"auroc": None}
    # features without judgements add nothing: one judged feature is still one
    assert bootstrap_intervals([*one, [], []], statistic="binary")["balanced_accuracy"] is None


def test_auroc_needs_every_probability():
    features = coin_flip_features(10, 6, seed=11)
    features[3][2]["p_yes"] = None
    intervals = bootstrap_intervals(features, statistic="binary")
    assert intervals["auroc"] is None and intervals["balanced_accuracy"] is not None


def test_a_metric_undefined_in_every_resample_is_none():
    only_positives = [[{"label": True, "answer": True, "p_yes": 0.7}] * 4 for _ in range(5)]
    intervals = bootstrap_intervals(only_positives, statistic="binary")
    assert intervals == {"balanced_accuracy": None, "f1": [1.0, 1.0], "auroc": None}


def test_the_vectorised_statistics_match_binary_metrics_and_auroc():
    """Each group of judgements scored at once equals metrics.py on that group alone, unparsed
    answers and tied probabilities included."""
    rng = np.random.default_rng(12)
    groups = []
    for _ in range(40):
        n = int(rng.integers(1, 15))
        groups.append([{"label": bool(rng.random() < 0.5), "answer": [True, False, None][int(rng.integers(3))],
                        "p_yes": float(rng.integers(0, 5)) / 4} for _ in range(n)])
    flat = [j for g in groups for j in g]
    labels = np.array([j["label"] for j in flat])
    answers = np.array([bool(j["answer"]) for j in flat])
    distinct, rank = np.unique([j["p_yes"] for j in flat], return_inverse=True)
    group = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    got = _pooled_statistics(labels, answers, rank, len(distinct), group, len(groups))
    for i, g in enumerate(groups):
        y = [j["label"] for j in g]
        expected = binary_metrics(y, [j["answer"] for j in g], [j["p_yes"] for j in g])
        for metric in ("balanced_accuracy", "auroc"):
            want = expected[metric]
            assert (np.isnan(got[metric][i]) if want is None else got[metric][i] == pytest.approx(want)), (i, metric)
        if any(y):  # F1 with no positive is undefined here (binary_metrics says 0.0)
            assert got["f1"][i] == pytest.approx(expected["f1"]), i
        else:
            assert np.isnan(got["f1"][i])
        assert expected["auroc"] == auroc(y, [j["p_yes"] for j in g])


def test_pooled_intervals_reads_the_judgements_of_a_source_and_method():
    perfect = [{"label": k % 2 == 0, "answer": k % 2 == 0, "p_yes": None} for k in range(4)]
    coin = coin_flip_features(1, 4, seed=13)[0]
    records = [{"scores": {"llm": {"detection": {"judgements": perfect}},
                           "shuffled": {"detection": {"judgements": coin}}}} for _ in range(6)]
    records.append({"scores": {"trivial": {"detection": {"judgements": coin}}}})
    assert pooled_intervals(records, source="llm", method="detection")["balanced_accuracy"] == [1.0, 1.0]
    assert pooled_intervals(records, source="trivial", method="detection")["balanced_accuracy"] is None
    assert pooled_intervals(records, source="llm", method="fuzzing")["balanced_accuracy"] is None


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="unknown statistic 'auc'"):
        bootstrap_intervals([[]], statistic="auc")
    with pytest.raises(ValueError, match="judgement 1 of feature 0 has no boolean 'label'"):
        bootstrap_intervals([[{"label": True, "answer": True}, {"answer": True}]], statistic="binary")
    with pytest.raises(ValueError, match="no finite 'similarity'"):
        bootstrap_intervals([[{"label": True, "similarity": None}]], statistic="similarity")
    with pytest.raises(ValueError, match="level must lie strictly between 0 and 1"):
        bootstrap_intervals([], statistic="binary", level=95)
    with pytest.raises(ValueError, match="unknown scoring method 'detect'"):
        pooled_intervals([], source="llm", method="detect")


def test_a_thousand_resamples_of_a_few_hundred_judgements_take_well_under_a_second():
    features = coin_flip_features(30, 10, seed=14)  # 300 judgements, with probabilities
    similar = [[{"label": j["label"], "similarity": j["p_yes"]} for j in f] for f in features]
    started = time.perf_counter()
    bootstrap_intervals(features, statistic="binary", n_boot=1000)
    binary_seconds = time.perf_counter() - started
    started = time.perf_counter()
    bootstrap_intervals(similar, statistic="similarity", n_boot=1000)
    similarity_seconds = time.perf_counter() - started
    print(f"1,000 resamples of 300 judgements over 30 features: binary {binary_seconds * 1000:.0f} ms, "
          f"similarity {similarity_seconds * 1000:.0f} ms")
    assert binary_seconds < 1.0 and similarity_seconds < 1.0


# --- compare_explanations: the headline table ------------------------------------------------

def binary_pooled(n_features: int, balanced: float | None, *, f1: float | None = None, auroc_value=None,
                  interval: dict | None = None) -> dict:
    pooled = {"n": 10 * n_features, "n_features": n_features, "balanced_accuracy": balanced,
              "mean_feature_balanced_accuracy": balanced, "precision": 0.5, "recall": 0.5,
              "f1": f1, "auroc": auroc_value}
    if interval is not None:
        pooled["interval"] = interval
    return pooled


def new_score_file(n_features: int, base: float) -> dict:
    """The extended format: llm, trivial and shuffled sources, embedding, and intervals."""
    def interval(value):
        return {"balanced_accuracy": [value - 0.05, value + 0.05], "f1": [0.1, 0.2], "auroc": None}

    overall = {}
    for source, value in (("llm", base), ("trivial", base - 0.1), ("shuffled", 0.5)):
        overall[source] = {
            "detection": binary_pooled(n_features, value, f1=value - 0.01, auroc_value=value + 0.01,
                                       interval=interval(value)),
            "fuzzing": binary_pooled(n_features if source != "trivial" else 0, value - 0.02 if source != "trivial"
                                     else None, interval=interval(value)),
            "embedding": {"n": 10 * n_features, "n_features": n_features, "auroc": value + 0.03,
                          "interval": {"auroc": [value - 0.07, value + 0.08]}}}
    return {"metadata": {"kind": "x", "model": "judge-model"}, "summary": {"overall": overall}, "features": []}


def old_score_file(n_features: int) -> dict:
    """Before shuffled, embedding and intervals: llm and trivial, detection only."""
    return {"metadata": {"kind": "x", "model": "judge-model"},
            "summary": {"overall": {"llm": {"detection": binary_pooled(n_features, 0.6)},
                                    "trivial": {"detection": binary_pooled(n_features, 0.55)}}},
            "features": []}


def write_inputs(tmp_path, files: dict[str, dict]) -> dict:
    scores, classifications = [], []
    for unit, scored in files.items():
        (tmp_path / f"{unit}.scores.json").write_text(json.dumps(scored))
        (tmp_path / f"{unit}.classes.json").write_text(json.dumps(
            {"metadata": {"model": "judge-model"}, "shares": {"overall": {"token": 0.5, "semantic": 0.5}}}))
        scores.append(tmp_path / f"{unit}.scores.json")
        classifications.append(tmp_path / f"{unit}.classes.json")
    return {"units": list(files), "scores": scores, "classifications": classifications,
            "out_summary": tmp_path / "summary.json", "out_table": tmp_path / "scores_table.md"}


def table_rows(path) -> list[list[str]]:
    """The cells of the scores table (the lines after its header and separator, up to a blank line)."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| units |")) + 2
    end = lines.index("", start)
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[start:end]]


def test_the_table_rows_come_in_the_headline_order_with_intervals(tmp_path):
    # units given neurons first: the table still puts transcoder features first
    inputs = write_inputs(tmp_path, {"neurons": new_score_file(8, 0.6), "features": new_score_file(12, 0.8)})
    summary = compare_explanations(**inputs)
    order = [(r["unit"], r["explanation"]) for r in summary["rows"]]
    assert order == [("features", "llm"), ("neurons", "llm"), ("features", "trivial"), ("neurons", "trivial"),
                     ("features", "shuffled"), ("neurons", "shuffled")]
    assert all(r["kind"] == r["unit"] for r in summary["rows"])
    first = summary["rows"][0]
    assert first["n_features"] == 12 and first["detection_balanced_accuracy"] == 0.8
    assert first["detection_balanced_accuracy_interval"] == pytest.approx([0.75, 0.85])
    assert first["detection_auroc_interval"] is None and first["embedding_auroc"] == pytest.approx(0.83)
    rows = table_rows(inputs["out_table"])
    assert [r[:2] for r in rows] == [
        ["transcoder features", "LLM explanation"], ["MLP neurons", "LLM explanation"],
        ["transcoder features", "token label (top tokens + logits, no LLM)"],
        ["MLP neurons", "token label (top tokens + logits, no LLM)"],
        ["transcoder features", "shuffled-explanation control"], ["MLP neurons", "shuffled-explanation control"]]
    # n, detection bal. acc. [CI], F1, AUROC, fuzzing bal. acc., embedding AUROC [CI]
    assert rows[0][2:] == ["12", "0.800 [0.750, 0.850]", "0.790", "0.810", "0.780", "0.830 [0.730, 0.880]"]
    assert rows[2][6] == "n/a"  # the token label is not fuzzed
    text = inputs["out_table"].read_text()
    assert "another unit's LLM explanation" in text and "95 % hierarchical bootstrap" in text
    # the saved summary is what the report reads, and its table still renders
    saved = read_interp_summary(inputs["out_summary"])
    assert saved["rows"] == summary["rows"]
    drawn = interp_scores_table(saved, tmp_path / "interp_scores.html")
    assert [row[2] for row in drawn["rows"]] == [12, 8, 12, 8, 12, 8]


def test_an_older_score_file_renders_with_n_a_cells(tmp_path):
    inputs = write_inputs(tmp_path, {"features": old_score_file(5), "neurons": new_score_file(4, 0.7)})
    summary = compare_explanations(**inputs)
    rows = table_rows(inputs["out_table"])
    assert len(rows) == 6
    # features, LLM explanation: detection without an interval, nothing else scored
    assert rows[0][2:] == ["5", "0.600", "n/a", "n/a", "n/a", "n/a"]
    assert rows[4] == ["transcoder features", "shuffled-explanation control", "n/a", "n/a", "n/a", "n/a", "n/a",
                       "n/a"]
    assert rows[5][3] == "0.500 [0.450, 0.550]"
    shuffled = summary["rows"][4]
    assert shuffled["scored"] is False and shuffled["n_features"] == 0
    assert shuffled["embedding_auroc"] is None and shuffled["detection_balanced_accuracy_interval"] is None
    interp_scores_table(read_interp_summary(inputs["out_summary"]), tmp_path / "interp_scores.html")


def test_a_file_that_is_not_a_score_file_is_named(tmp_path):
    inputs = write_inputs(tmp_path, {"features": {"metadata": {"model": "judge-model"}, "features": []}})
    with pytest.raises(ValueError, match=r"features\.scores\.json has no metadata.model or summary.overall"):
        compare_explanations(**inputs)
