"""plot_run_report on small synthetic metrics files: the figures show the files' numbers, every
section is optional but transcoders and features, and a malformed file fails with one line
naming it before any figure is written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from circuitflow.io import write_json
from circuitflow.report import ReportInputError, plot_run_report

LAYERS = [0, 1, 2]
UNITS = ["features", "neurons"]


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def write_run(tmp_path, kind: str = "plt") -> dict:
    """A run's metrics files in the shapes the stages write them (only the fields the report reads)."""
    inputs = {}
    rows = [{"layer": l, "fvu": 0.1 + 0.05 * l, "l0": 16.0 + l, "dead_fraction": 0.01 * l,
             "dense_fraction": 0.02, "ce_clean": 3.0, "ce_spliced": 3.1, "ce_ablated": 4.0,
             "loss_recovered": None if l == 2 else 0.9 - 0.1 * l, "kl_spliced": 0.01, "top1_agreement": 0.9}
            for l in LAYERS]
    all_layers = {"layer": "all", "fvu": 0.15, "l0": 17.0, "dead_fraction": 0.01, "dense_fraction": 0.02,
                  "loss_recovered": 0.7}
    write_json(tmp_path / "fidelity.json", {"kind": "transcoder_set", "n_features": 64, "windows": 8,
                                            "dense_fraction_threshold": 0.1, "layers": rows,
                                            "all_layers": all_layers})
    inputs["fidelity"] = str(tmp_path / "fidelity.json")
    curve = [{"step": s, "fvu": 1.0 / (1 + s), "aux": 0.0, "dead": s % 3, **({"resampled": 2} if s == 4 else {})}
             for s in range(0, 10, 2)]
    if kind == "clt":
        write_json(tmp_path / "clt.metrics.json", {"kind": "cross_layer_transcoder", "layers": rows, "curve": curve})
        inputs["training_metrics"] = [str(tmp_path / "clt.metrics.json")]
    else:
        inputs["training_metrics"] = []
        for l in LAYERS:
            write_json(tmp_path / f"layer_{l}.metrics.json", {"layer": l, "fvu": 0.1, "curve": curve})
            inputs["training_metrics"].append(str(tmp_path / f"layer_{l}.metrics.json"))
    for name, n in (("features", 20), ("neurons", 8)):
        units = [{"layer": l, "feature": i, "activation_freq": (i + 1) / (n + 1) / 10} for l in LAYERS
                 for i in range(n)]
        units[0]["activation_freq"] = 0.0  # a sampled neuron may never fire
        write_json(tmp_path / f"{name}_metadata.json", {"kind": name, "total_tokens": 1000, "features": units,
                                                        "dead_features_per_layer": {str(l): l for l in LAYERS}})
    inputs["feature_metadata"] = str(tmp_path / "features_metadata.json")
    inputs["neuron_metadata"] = str(tmp_path / "neurons_metadata.json")
    inputs["graph_scores"] = []
    for slug, score in (("alpha", 0.8), ("beta", 0.6)):
        write_json(tmp_path / f"{slug}.scores.json", {
            "slug": slug, "prompt": f"The {slug} prompt", "replacement_score": score, "completeness_score": score + 0.1,
            "target_logits": [{"token": " x", "probability": 0.25}], "active_features": 10, "selected_features": 5,
            "expected_target": {"token": " y", "rank": 3}})
        inputs["graph_scores"].append(str(tmp_path / f"{slug}.scores.json"))
    inputs["classifications"], inputs["detection_scores"] = [], []
    for i, name in enumerate(UNITS):
        shares = {"language": 0.5 - 0.1 * i, "domain": 0.3, "uninterpretable": 0.2 + 0.1 * i}
        write_json(tmp_path / f"{name}_classes.json", {"shares": {"n": 6, "overall": shares,
                                                                   "per_layer": {"0": shares, "2": shares}}})
        records = [{"layer": 0, "scores": {
            "llm": {"detection": {"balanced_accuracy": 0.5 + 0.1 * j + 0.05 * i, "auroc": 0.6}},
            "trivial": {"detection": {"balanced_accuracy": 0.5, "auroc": None}}}} for j in range(3)]
        records.append({"layer": 1, "scores": {"trivial": {"detection": {"balanced_accuracy": 0.75, "auroc": 0.8}}}})
        write_json(tmp_path / f"{name}_scores.json", {"features": records})
        inputs["classifications"].append(str(tmp_path / f"{name}_classes.json"))
        inputs["detection_scores"].append(str(tmp_path / f"{name}_scores.json"))
    write_json(tmp_path / "summary.json", {"judge": ["judge-model"], "rows": [
        {"kind": k, "explanation": e, "n_features": 3, "detection_balanced_accuracy": 0.625}
        for k in UNITS for e in ("llm", "trivial")], "category_shares": {"features": {"language": 0.5}}})
    inputs["interp_summary"] = str(tmp_path / "summary.json")
    return inputs


def outputs(folder, graphs: bool = True, interp: bool = True) -> dict:
    names = {"fidelity_plot": "png", "fidelity_table": "html", "training_plot": "png", "frequency_plot": "png",
             "data": "json"}
    if graphs:
        names.update(graph_plot="png", graph_table="html")
    if interp:
        names.update(interp_table="html", classification_plot="png", detection_plot="png")
    return {name: str(folder / f"{name}.{ext}") for name, ext in names.items()}


def test_figures_show_the_files_numbers(tmp_path):
    inputs = write_run(tmp_path)
    out = outputs(tmp_path / "report")
    drawn = plot_run_report(outputs=out, kind="plt", layers=LAYERS, interp_units=UNITS, **inputs)
    assert json.loads((tmp_path / "report/data.json").read_text()) == json.loads(json.dumps(drawn))
    fidelity = json.loads((tmp_path / "fidelity.json").read_text())
    for key in ("fvu", "l0", "dead_fraction", "dense_fraction", "loss_recovered"):
        assert drawn["fidelity_plot"][key] == pytest.approx([row[key] for row in fidelity["layers"]])
    assert drawn["fidelity_plot"]["loss_recovered"][2] is None  # undefined: no bar, not a zero bar
    assert [c["label"] for c in drawn["training_plot"]["curves"]] == ["layer 0", "layer 1", "layer 2"]
    assert drawn["training_plot"]["curves"][0]["resampled_steps"] == [4]
    assert drawn["training_plot"]["curves"][1]["fvu"] == pytest.approx([1.0 / (1 + s) for s in range(0, 10, 2)])
    freq = drawn["frequency_plot"]
    assert freq["features"]["n"] == 60 and freq["features"]["dead"] == 3 and freq["features"]["never_fired"] == 1
    assert sum(freq["neurons"]["shares"]) == pytest.approx(23 / 24)  # the one that never fired has no bin
    assert drawn["graph_plot"] == {"slugs": ["alpha", "beta"], "replacement_score": pytest.approx([0.8, 0.6]),
                                   "completeness_score": pytest.approx([0.9, 0.7])}
    shares = drawn["classification_plot"]
    assert shares["neurons"]["language"][0] == pytest.approx(0.4) and shares["neurons"]["labels"] == [
        "overall", "layer 0", "layer 2"]
    detection = drawn["detection_plot"]["balanced_accuracy"]
    assert detection["features/llm"] == pytest.approx([0.5, 0.6, 0.7])
    assert detection["neurons/trivial"] == pytest.approx([0.5, 0.5, 0.5, 0.75])
    assert drawn["detection_plot"]["auroc"]["features/trivial"] == pytest.approx([0.8])  # nulls left out
    assert png_size(tmp_path / "report/fidelity_plot.png") == (1200, 750)
    for name in ("training_plot", "frequency_plot", "graph_plot", "classification_plot", "detection_plot"):
        width, height = png_size(tmp_path / f"report/{name}.png")
        assert width >= 900 and height >= 200, name
    graph_table = (tmp_path / "report/graph_table.html").read_text()
    assert "The alpha prompt" in graph_table and "<td class=\"num\">0.800</td>" in graph_table
    fidelity_table = (tmp_path / "report/fidelity_table.html").read_text()
    assert fidelity_table.count("<tr") == 1 + 3 + 1 and "n/a" in fidelity_table  # head, layers, all
    assert "judge-model" in (tmp_path / "report/interp_table.html").read_text()


def test_same_inputs_give_the_same_bytes(tmp_path):
    inputs = write_run(tmp_path)
    first, second = outputs(tmp_path / "a"), outputs(tmp_path / "b")
    for out in (first, second):
        plot_run_report(outputs=out, kind="plt", layers=LAYERS, interp_units=UNITS, **inputs)
    for name in first:
        assert open(first[name], "rb").read() == open(second[name], "rb").read(), name


def test_cross_layer_run_without_graphs_or_interp(tmp_path):
    inputs = write_run(tmp_path, kind="clt")
    for key in ("graph_scores", "classifications", "detection_scores"):
        inputs[key] = []
    inputs["interp_summary"] = None
    out = outputs(tmp_path / "report", graphs=False, interp=False)
    drawn = plot_run_report(outputs=out, kind="clt", layers=LAYERS, **inputs)
    assert sorted(drawn) == ["fidelity_plot", "fidelity_table", "frequency_plot", "training_plot"]
    assert [c["label"] for c in drawn["training_plot"]["curves"]] == ["cross-layer transcoder (mean over layers)"]
    with pytest.raises(ValueError, match="do not match the inputs given"):
        plot_run_report(outputs=outputs(tmp_path / "again"), kind="clt", layers=LAYERS, **inputs)


def _break_fidelity(tmp_path, inputs):
    data = json.loads((tmp_path / "fidelity.json").read_text())
    del data["layers"][1]["fvu"]
    write_json(tmp_path / "fidelity.json", data)
    return "fidelity.json: layers\\[1\\] has no field 'fvu'"


def _string_fvu(tmp_path, inputs):
    data = json.loads((tmp_path / "fidelity.json").read_text())
    data["layers"][0]["fvu"] = "0.5"
    write_json(tmp_path / "fidelity.json", data)
    return "fidelity.json: layers\\[0\\].fvu is \"0.5\", not a finite number"


def _truncated_metrics(tmp_path, inputs):
    path = tmp_path / "layer_1.metrics.json"
    path.write_text(path.read_text()[:40])
    return "transcoder metrics file .*layer_1.metrics.json is not JSON"


def _wrong_layer(tmp_path, inputs):
    write_json(tmp_path / "layer_2.metrics.json", {"layer": 5, "curve": [{"step": 0, "fvu": 1.0, "dead": 0}]})
    return "layer_2.metrics.json: holds layer 5, but the workflow lists it for layer 2"


def _list_scores(tmp_path, inputs):
    (tmp_path / "beta.scores.json").write_text("[1, 2]")
    return "graph scores file .*beta.scores.json holds a JSON array, not an object"


def _missing_metadata(tmp_path, inputs):
    (tmp_path / "neurons_metadata.json").unlink()
    return "feature metadata file .*neurons_metadata.json does not exist"


def _bad_shares(tmp_path, inputs):
    write_json(tmp_path / "neurons_classes.json", {"shares": {"n": 1, "overall": {"language": None}}})
    return "neurons_classes.json: shares.overall.language is null, not a finite number"


@pytest.mark.parametrize("damage", [_break_fidelity, _string_fvu, _truncated_metrics, _wrong_layer, _list_scores,
                                    _missing_metadata, _bad_shares])
def test_malformed_file_is_named_before_anything_is_written(tmp_path, damage):
    inputs = write_run(tmp_path)
    message = damage(tmp_path, inputs)
    out = outputs(tmp_path / "report")
    with pytest.raises(ReportInputError, match=message) as error:
        plot_run_report(outputs=out, kind="plt", layers=LAYERS, interp_units=UNITS, **inputs)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "report").exists()


def test_importing_the_package_does_not_load_matplotlib():
    """Snakemake parses the workflow for every command: plotting libraries load only in the job."""
    code = "import sys, circuitflow.report; print('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_imported_set_without_fidelity_or_training(tmp_path):
    """transcoder.source: no training curves, and no fidelity unless evaluation.imported_set asks."""
    inputs = write_run(tmp_path)
    inputs.update(training_metrics=[], fidelity=None)
    out = {name: path for name, path in outputs(tmp_path / "report").items()
           if name not in ("fidelity_plot", "fidelity_table", "training_plot")}
    drawn = plot_run_report(outputs=out, kind="plt", layers=LAYERS, interp_units=UNITS, **inputs)
    assert "fidelity_plot" not in drawn and "training_plot" not in drawn and "graph_plot" in drawn
    assert not (tmp_path / "report/fidelity_plot.png").exists()
    with pytest.raises(ValueError, match="do not match the inputs given"):  # a fidelity output nothing draws
        plot_run_report(outputs=outputs(tmp_path / "again"), kind="plt", layers=LAYERS, interp_units=UNITS, **inputs)
