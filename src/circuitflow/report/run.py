"""plot_run_report: read every metrics file first (so a malformed one fails before any figure is
written), then draw each section whose inputs were given."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from circuitflow.io import write_json
from circuitflow.report import inputs, plots, tables

log = logging.getLogger("circuitflow.report")

# Each section: the outputs it writes. A section is drawn when its inputs are given; graphs
# and the judge's results are optional so the report also fits runs without them, and an
# imported set (transcoder.source) has no training curves and, unless asked for, no fidelity.
SECTIONS = {
    "fidelity": ("fidelity_plot", "fidelity_table"),
    "training": ("training_plot",),
    "features": ("frequency_plot",),
    "graphs": ("graph_plot", "graph_table"),
    "interp": ("interp_table", "classification_plot", "detection_plot"),
}


def plot_run_report(*, outputs: Mapping[str, str | Path], kind: str, layers: Sequence[int],
                    training_metrics: Sequence[str | Path], fidelity: str | Path | None, feature_metadata: str | Path,
                    neuron_metadata: str | Path | None = None, graph_scores: Sequence[str | Path] = (),
                    interp_units: Sequence[str] = (), classifications: Sequence[str | Path] = (),
                    detection_scores: Sequence[str | Path] = (), interp_summary: str | Path | None = None) -> dict:
    """Write the report's figures and tables to `outputs` (name -> path, names from SECTIONS, plus
    `data`: what every figure drew, as JSON) and return that data.

    kind/layers: transcoder.kind and the layers of `training_metrics` (one layer_<l>.metrics.json
    per layer, or the one clt.metrics.json). interp_units: the units the judge explained
    ("features", "neurons"), in the order of `classifications` and `detection_scores`.
    """
    wanted = {"features"}
    if fidelity:
        wanted.add("fidelity")
    if training_metrics:
        wanted.add("training")
    if graph_scores:
        wanted.add("graphs")
    if interp_summary is not None:
        wanted.add("interp")
    expected = {name for section in wanted for name in SECTIONS[section]} | {"data"}
    if set(outputs) != expected:
        raise ValueError(f"plot_run_report: outputs {sorted(outputs)} do not match the inputs given, which make "
                         f"{sorted(expected)}")

    data = {
        "fidelity": inputs.read_fidelity(fidelity) if "fidelity" in wanted else None,
        "curves": inputs.read_training_curves(training_metrics, layers, kind) if "training" in wanted else None,
        "features": inputs.read_activation_frequencies(feature_metadata),
        "neurons": inputs.read_activation_frequencies(neuron_metadata) if neuron_metadata else None,
    }
    if "graphs" in wanted:
        data["graphs"] = inputs.read_graph_scores(graph_scores)
    if "interp" in wanted:
        data["summary"] = inputs.read_interp_summary(interp_summary)
        data["classes"] = inputs.read_classifications(interp_units, classifications)
        data["detection"] = inputs.read_detection_scores(interp_units, detection_scores)

    drawn = {"frequency_plot": plots.plot_activation_frequency(data["features"], data["neurons"],
                                                               outputs["frequency_plot"])}
    if "fidelity" in wanted:
        drawn["fidelity_plot"] = plots.plot_fidelity(data["fidelity"], outputs["fidelity_plot"])
        drawn["fidelity_table"] = tables.fidelity_table(data["fidelity"], outputs["fidelity_table"])
    if "training" in wanted:
        drawn["training_plot"] = plots.plot_training_curves(data["curves"], outputs["training_plot"])
    if "graphs" in wanted:
        drawn["graph_plot"] = plots.plot_graph_scores(data["graphs"], outputs["graph_plot"])
        drawn["graph_table"] = tables.graph_scores_table(data["graphs"], outputs["graph_table"])
    if "interp" in wanted:
        drawn["interp_table"] = tables.interp_scores_table(data["summary"], outputs["interp_table"])
        drawn["classification_plot"] = plots.plot_classification_shares(data["classes"],
                                                                         outputs["classification_plot"])
        drawn["detection_plot"] = plots.plot_detection_scores(data["detection"], outputs["detection_plot"])
    write_json(outputs["data"], drawn)
    log.info("report: %d figures and tables (%s) for %d layers", len(drawn), ", ".join(sorted(drawn)), len(layers))
    return drawn
