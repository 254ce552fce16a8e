"""`snakemake --report` for the tiny run: the default target makes the report's figures, the
report holds every category with its captions and figures, the figures show the measured
numbers, and the page renders in headless Chromium (with tools/report_screenshot.py's functions,
which also refresh the README's screenshot: see that file).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import sys
import zipfile
from pathlib import Path

import pytest

from ..conftest import ROOT, copy_workflow, tiny_config, write_config
from .test_workflow import snakemake

CATEGORIES = {
    "Transcoders": {"Fidelity": ["transcoder_fidelity.html", "transcoder_fidelity.png"],
                    "Training": ["training_curves.png"]},
    "Features": {"Activation frequency": ["activation_frequency.png"]},
    "Attribution graphs": {"Scores": ["graph_scores.html", "graph_scores.png"]},
    "Interpretability": {"Explanation scores": ["detection_scores.png", "interp_scores.html"],
                         "Categories": ["classification_shares.png"]},
}
# A phrase of each caption (report/*.rst), as docutils renders it.
CAPTIONS = {
    "transcoder_fidelity.png": "<strong>FVU</strong>: the fraction of the MLP output",
    "transcoder_fidelity.html": "The numbers behind the fidelity figure",
    "training_curves.png": "Training of the transcoders (60 steps of",
    "activation_frequency.png": "for every live transcoder feature and for the sampled MLP neurons",
    "graph_scores.png": "<strong>Replacement</strong>: the share of the end-to-end influence",
    "graph_scores.html": "the top target token and its probability",
    "interp_scores.html": "The headline table of the interpretability stage",
    "detection_scores.png": "The distribution of per-unit detection scores",
    "classification_shares.png": "<tt class=\"docutils literal\">interp.n_per_layer</tt> = 1 units each",
}
FIGURE_SIZES = {"transcoder_fidelity.png": (1200, 750), "training_curves.png": (1200, 480),
                "activation_frequency.png": (1200, 500), "detection_scores.png": (1200, 500)}


def load_report_screenshot():
    spec = importlib.util.spec_from_file_location("report_screenshot", ROOT / "tools" / "report_screenshot.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


report_screenshot = load_report_screenshot()
CHROMIUM = report_screenshot.CHROMIUM


def report_variable(page: str, name: str):
    """One of the JSON values the report's page defines as `var <name> = ...;` in <script id=...>."""
    found = re.search(rf'<script id="{name}">\s*var \w+ = (.*?);\s*</script>', page, re.S)
    assert found, f"no <script id={name!r}> in the report"
    return json.loads(found.group(1))


def data_uri_bytes(uri: str) -> bytes:
    header, _, payload = uri.partition(",")
    assert header.endswith(";base64"), header
    return base64.b64decode(payload)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory, tiny_llama_source, tiny_corpus):
    """The tiny run through the default target `all`, then `snakemake --report report.html`."""
    tmp = tmp_path_factory.mktemp("report-run")
    copy_workflow(tmp)  # with the captions and the front page (workflow/report/)
    write_config(tmp / "tiny.yaml", tiny_config(tmp, tiny_llama_source, tiny_corpus))
    run = snakemake(tmp, "--cores", "2", "--configfile", "tiny.yaml", timeout=1800)
    assert "plot_run_report" in run.stdout
    snakemake(tmp, "--report", "report.html", "--configfile", "tiny.yaml")
    return tmp


@pytest.mark.slow
def test_report_has_every_category_caption_and_figure(tiny_report):
    page = (tiny_report / "report.html").read_text(encoding="utf-8")
    folder = "results/tiny/report"
    categories = report_variable(page, "categories")
    assert categories == {cat: {sub: [f"{folder}/{name}" for name in names] for sub, names in subs.items()}
                          for cat, subs in CATEGORIES.items()}
    results = report_variable(page, "results")
    for path, entry in results.items():
        name = Path(path).name
        assert CAPTIONS[name] in entry["caption"], (name, entry["caption"])
        assert entry["job_properties"]["rule"] == "plot_run_report" and entry["labels"]["figure"]
        embedded = data_uri_bytes(entry["data_uri"])
        assert embedded == (tiny_report / path).read_bytes(), name  # the figure itself, not a link
        if name.endswith(".png"):
            assert entry["mime_type"] == "image/png"
            width, height = png_size(embedded)
            assert (width, height) == FIGURE_SIZES.get(name, (width, height)) and width >= 900 and height >= 200
        else:
            assert entry["mime_type"] == "text/html" and embedded.startswith(b"<!doctype html>")
    description = report_variable(page, "workflow-desc")
    assert "circuitflow run <tt class=\"docutils literal\">tiny</tt>" in description
    assert "javascript:app.showCategory('Transcoders')" in description


@pytest.mark.slow
def test_figures_show_the_measured_numbers(tiny_report):
    results = tiny_report / "results/tiny"
    drawn = json.loads((results / "report/report_data.json").read_text())
    fidelity = json.loads((results / "transcoders/fidelity.json").read_text())
    bars = drawn["fidelity_plot"]
    assert bars["layers"] == [row["layer"] for row in fidelity["layers"]] == [0, 1]
    for key in ("fvu", "l0", "dead_fraction", "dense_fraction", "loss_recovered"):
        assert bars[key] == pytest.approx([row[key] for row in fidelity["layers"]]), key
    assert bars["mean_fvu"] == pytest.approx(fidelity["mean_fvu"])
    table = (results / "report/transcoder_fidelity.html").read_text()
    for row in fidelity["layers"]:
        assert f'<td class="num">{row["fvu"]:.3f}</td>' in table

    for layer, curve in zip((0, 1), drawn["training_plot"]["curves"]):
        metrics = json.loads((results / f"transcoders/layer_{layer}.metrics.json").read_text())
        assert curve["step"] == [p["step"] for p in metrics["curve"]]
        assert curve["fvu"] == pytest.approx([p["fvu"] for p in metrics["curve"]])

    for kind in ("features", "neurons"):
        metadata = json.loads((results / f"{kind}/feature_metadata.json").read_text())
        frequency = drawn["frequency_plot"][kind]
        assert frequency["n"] == len(metadata["features"]) > 0
        assert frequency["dead"] == sum(metadata["dead_features_per_layer"].values())
        assert sum(frequency["shares"]) == pytest.approx(1 - frequency["never_fired"] / frequency["n"])

    graphs = drawn["graph_plot"]
    assert graphs["slugs"] == ["france-capital", "genesis"]
    graph_table = (results / "report/graph_scores.html").read_text()
    for slug, replacement, completeness in zip(graphs["slugs"], graphs["replacement_score"],
                                               graphs["completeness_score"]):
        scores = json.loads((results / f"attribution/{slug}.scores.json").read_text())
        assert (replacement, completeness) == pytest.approx((scores["replacement_score"], scores["completeness_score"]))
        assert f'<td class="num">{scores["replacement_score"]:.3f}</td>' in graph_table

    for kind in ("features", "neurons"):
        classes = json.loads((results / f"interp/{kind}/feature_classifications.json").read_text())
        shown = drawn["classification_plot"][kind]
        assert shown["n"] == classes["shares"]["n"]
        for category, share in classes["shares"]["overall"].items():
            assert shown[category][0] == pytest.approx(share), (kind, category)
        scored = json.loads((results / f"interp/{kind}/scores.json").read_text())
        for source in ("llm", "trivial"):
            expected = sorted(r["scores"][source]["detection"]["balanced_accuracy"] for r in scored["features"]
                              if source in r["scores"] and r["scores"][source]["detection"]["balanced_accuracy"]
                              is not None)
            assert drawn["detection_plot"]["balanced_accuracy"].get(f"{kind}/{source}", []) == pytest.approx(expected)
    summary = json.loads((results / "interp/summary.json").read_text())
    interp_table = (results / "report/interp_scores.html").read_text()
    assert [row["explanation"] for row in summary["rows"]] == ["llm", "llm", "trivial", "trivial", "shuffled",
                                                                "shuffled"]
    for row in summary["rows"]:
        if row["detection_balanced_accuracy"] is not None:
            assert f'<td>{row["detection_balanced_accuracy"]:.3f}' in interp_table


@pytest.mark.slow
def test_report_zip_holds_the_figures(tiny_report):
    snakemake(tiny_report, "--report", "report.zip", "--configfile", "tiny.yaml")
    names = zipfile.ZipFile(tiny_report / "report.zip").namelist()
    assert "report/report.html" in names
    for subs in CATEGORIES.values():
        for files in subs.values():
            assert any(n.endswith(f) for f in files for n in names), files


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tiny_report, tmp_path):
    import matplotlib.image

    opened = report_screenshot.write_opened(tiny_report / "report.html", tmp_path / "report-open.html",
                                            ("Transcoders", "Fidelity", ".png"))
    dom = report_screenshot.chromium(opened.as_uri(), "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-3000:]
    errors = report_screenshot.console_errors(dom.stderr)
    assert not errors, errors
    assert "FVU, L0, dead and loss recovered per layer" in dom.stdout  # the result's label, in the navbar
    assert "fraction of the MLP output" in dom.stdout and 'src="data:image/png' in dom.stdout

    png = tmp_path / "report.png"  # what the tool writes to docs/report-screenshot.png
    report_screenshot.screenshot(tiny_report / "report.html", png)
    pixels = matplotlib.image.imread(png)
    assert pixels.shape[:2] == (1000, 1400)
    # the fidelity figure is on screen: many pixels of its FVU bars' blue (#1f77b4)
    blue = ((abs(pixels[..., 0] - 0x1F / 255) < 0.02) & (abs(pixels[..., 1] - 0x77 / 255) < 0.02)
            & (abs(pixels[..., 2] - 0xB4 / 255) < 0.02))
    assert blue.sum() > 5000, blue.sum()
