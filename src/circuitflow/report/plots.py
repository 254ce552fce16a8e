"""The report's figures (matplotlib, PNG). Each function draws one figure from the data that
`circuitflow.report.inputs` read and returns what it drew, read back from the figure's own
artists (bar heights, line points, histogram counts), so tests compare the picture with the
metrics files rather than with the code's intentions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

FEATURES_COLOR, NEURONS_COLOR = "#1f77b4", "#ff7f0e"
UNIT_COLORS = {"features": FEATURES_COLOR, "neurons": NEURONS_COLOR}
UNIT_NAMES = {"features": "transcoder features", "neurons": "MLP neurons"}
SOURCE_NAMES = {"llm": "LLM explanation", "trivial": "top tokens + logits"}
DPI = 100


def _pyplot():
    """pyplot on the file-only Agg backend, imported here so that importing this package (or
    parsing the Snakefile) never loads matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | Path) -> None:
    from circuitflow.io import atomic_path

    with atomic_path(out) as tmp:
        # metadata Software=None: no matplotlib version stamp, so the same data gives the same bytes
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
    _pyplot().close(fig)


def _plain(value: float) -> float | None:
    """A drawn value for JSON (NaN, drawn as a missing bar, becomes null)."""
    return None if value is None or math.isnan(value) else float(value)


def _heights(container) -> list[float | None]:
    return [_plain(rect.get_height()) for rect in container]


def _widths(container) -> list[float | None]:
    return [_plain(rect.get_width()) for rect in container]


def _layer_axis(ax, layers: Sequence[int]) -> None:
    ax.set_xticks(range(len(layers)), [str(layer) for layer in layers], fontsize=8 if len(layers) > 16 else 10)
    ax.set_xlabel("layer")
    ax.grid(axis="y", alpha=0.3)


def plot_fidelity(fidelity: dict, out: str | Path) -> dict:
    """Per-layer bars of validation FVU, L0, dead and dense fractions, and loss recovered."""
    plt = _pyplot()
    layers, x = fidelity["layer"], np.arange(len(fidelity["layer"]))
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5), constrained_layout=True)
    (ax_fvu, ax_l0), (ax_dead, ax_loss) = axes
    fvu = ax_fvu.bar(x, fidelity["fvu"], color=FEATURES_COLOR)
    ax_fvu.axhline(fidelity["mean_fvu"], color="k", ls="--", lw=1, label=f"mean {fidelity['mean_fvu']:.3f}")
    ax_fvu.set(title="FVU (fraction of variance unexplained; lower is better)", ylabel="FVU")
    ax_fvu.legend(loc="upper left", fontsize=9)
    l0 = ax_l0.bar(x, fidelity["l0"], color="#2ca02c")
    ax_l0.set(title="L0 (active features per token)", ylabel="L0")
    dead = ax_dead.bar(x - 0.2, fidelity["dead_fraction"], width=0.4, color="#7f7f7f", label="dead (never fired)")
    dense = ax_dead.bar(x + 0.2, fidelity["dense_fraction"], width=0.4, color="#d62728",
                        label=f"dense (> {fidelity['dense_threshold']:.0%} of tokens)")
    ax_dead.set(title="Dead and dense features", ylabel="fraction of features")
    ax_dead.legend(fontsize=9)
    recovered = [np.nan if v is None else v for v in fidelity["loss_recovered"]]
    loss = ax_loss.bar(x, recovered, color="#9467bd")
    ax_loss.axhline(1.0, color="k", lw=0.8, alpha=0.5)
    ax_loss.axhline(0.0, color="k", lw=0.8, alpha=0.5)
    overall = fidelity["all_layers_loss_recovered"]
    if overall is not None:
        ax_loss.axhline(overall, color="#9467bd", ls="--", lw=1.2, label=f"every MLP replaced at once: {overall:.3f}")
        ax_loss.legend(fontsize=9)
    ax_loss.set(title="Loss recovered (1 = clean model, 0 = MLP zero-ablated)", ylabel="loss recovered")
    for ax in axes.flat:
        _layer_axis(ax, layers)
    fig.suptitle(f"Transcoder fidelity on {fidelity['windows']} held-out validation windows "
                 f"({fidelity['n_features']} features per layer)")
    drawn = {"layers": list(layers), "fvu": _heights(fvu), "l0": _heights(l0), "dead_fraction": _heights(dead),
             "dense_fraction": _heights(dense), "loss_recovered": _heights(loss),
             "mean_fvu": float(ax_fvu.lines[0].get_ydata()[0])}
    _save(fig, out)
    return drawn


def plot_training_curves(curves: list[dict], out: str | Path) -> dict:
    """Training FVU and dead-latent count against the step, one line per layer (coloured by layer),
    with a marker where dead latents were resampled."""
    plt = _pyplot()
    from matplotlib import cm, colors

    fig, (ax_fvu, ax_dead) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    layers = [c["layer"] for c in curves if c["layer"] is not None]
    norm = colors.Normalize(min(layers, default=0), max(max(layers, default=1), min(layers, default=0) + 1))
    drawn = []
    for curve in curves:
        color = cm.viridis(norm(curve["layer"])) if curve["layer"] is not None else FEATURES_COLOR
        (line,) = ax_fvu.plot(curve["step"], curve["fvu"], color=color, lw=1.2, label=curve["label"])
        ax_dead.plot(curve["step"], curve["dead"], color=color, lw=1.2)
        marked = [i for i, step in enumerate(curve["step"]) if step in set(curve["resampled_steps"])]
        if marked:
            ax_fvu.plot([curve["step"][i] for i in marked], [curve["fvu"][i] for i in marked], "v", color=color,
                        ms=5, mec="k", mew=0.4)
        drawn.append({"label": curve["label"], "step": [int(v) for v in line.get_xdata()],
                      "fvu": [float(v) for v in line.get_ydata()], "resampled_steps": curve["resampled_steps"]})
    ax_fvu.set(title="Training loss (FVU on the training batch)", xlabel="step", ylabel="FVU")
    ax_dead.set(title="Dead latents (no activation within transcoder.dead_tokens)", xlabel="step",
                ylabel="dead latents")
    for ax in (ax_fvu, ax_dead):
        ax.grid(alpha=0.3)
    handles = []
    if any(c["resampled_steps"] for c in curves):
        handles = ax_fvu.plot([], [], "v", color="w", mec="k", label="dead latents resampled")
    if len(curves) <= 8:
        ax_fvu.legend(fontsize=8)
    else:  # a legend of 30 layers hides the curves: a colour bar says which layer is which
        fig.colorbar(cm.ScalarMappable(norm=norm, cmap="viridis"), ax=[ax_fvu, ax_dead], label="layer")
        if handles:
            ax_fvu.legend(handles=handles, fontsize=8)
    _save(fig, out)
    return {"curves": drawn}


def _log_frequencies(freqs: Sequence[float]) -> tuple[np.ndarray, int]:
    values = np.asarray(freqs, dtype=float)
    return np.log10(values[values > 0]), int((values <= 0).sum())


def plot_activation_frequency(features: dict, neurons: dict | None, out: str | Path) -> dict:
    """Histograms of log10 activation frequency on the validation tokens: transcoder features vs
    MLP neurons (every layer pooled), and the features' histogram layer by layer."""
    plt = _pyplot()
    low = math.floor(math.log10(1.0 / max(features["total_tokens"], 1)))
    bins = np.linspace(low, 0.0, 4 * -low + 1) if low < 0 else np.linspace(-1, 0, 5)
    fig, (ax_hist, ax_map) = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True,
                                          gridspec_kw={"width_ratios": [1, 1.2]})
    drawn = {"bins": [float(b) for b in bins]}
    for unit, data in (("features", features), ("neurons", neurons)):
        if data is None:
            continue
        pooled = [v for values in data["by_layer"].values() for v in values]
        logs, never = _log_frequencies(pooled)
        dead = sum(data["dead_per_layer"].values())
        label = f"{UNIT_NAMES[unit]} ({len(pooled)} collected" + (f", {dead} dead" if dead else "") + \
            (f", {never} never fired" if never else "") + ")"
        weights = np.full(len(logs), 1.0 / max(len(pooled), 1))
        counts, _, patches = ax_hist.hist(logs, bins=bins, weights=weights, histtype="stepfilled", alpha=0.45,
                                          color=UNIT_COLORS[unit], edgecolor=UNIT_COLORS[unit], label=label)
        drawn[unit] = {"n": len(pooled), "never_fired": never, "dead": dead,
                       "shares": [float(c) for c in counts]}
    ax_hist.set(title="Activation frequency, all layers", xlabel="log10(activation frequency)",
                ylabel="share of units")
    ax_hist.legend(fontsize=8, loc="upper left")
    ax_hist.grid(alpha=0.3)
    layers = list(features["by_layer"])
    grid = np.zeros((len(layers), len(bins) - 1))
    for row, layer in enumerate(layers):
        logs, _ = _log_frequencies(features["by_layer"][layer])
        counts, _ = np.histogram(logs, bins=bins)
        grid[row] = counts / max(len(features["by_layer"][layer]), 1)
    image = ax_map.imshow(grid, aspect="auto", origin="lower", cmap="magma_r",
                          extent=(bins[0], bins[-1], -0.5, len(layers) - 0.5))
    ax_map.set_yticks(range(len(layers)), [str(layer) for layer in layers], fontsize=8 if len(layers) > 16 else 10)
    ax_map.set(title="Transcoder features by layer", xlabel="log10(activation frequency)", ylabel="layer")
    fig.colorbar(image, ax=ax_map, label="share of the layer's collected features")
    drawn["features_by_layer"] = {str(layer): [float(v) for v in grid[row]] for row, layer in enumerate(layers)}
    fig.suptitle(f"How often units fire on {features['total_tokens']} validation tokens")
    _save(fig, out)
    return drawn


def plot_graph_scores(rows: list[dict], out: str | Path) -> dict:
    """Replacement and completeness score of each prompt's attribution graph."""
    plt = _pyplot()
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(10, 1.6 + 0.45 * len(rows)), constrained_layout=True)
    replacement = ax.barh(y - 0.2, [r["replacement_score"] for r in rows], height=0.4, color=FEATURES_COLOR,
                          label="replacement score")
    completeness = ax.barh(y + 0.2, [r["completeness_score"] for r in rows], height=0.4, color="#2ca02c",
                           label="completeness score")
    ax.set_yticks(y, [r["slug"] for r in rows])
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="score (1 = everything explained by features, none by error nodes)",
           title="Attribution graph scores per prompt")
    fig.legend(fontsize=9, loc="outside right upper")  # beside the bars, which may reach 1
    ax.grid(axis="x", alpha=0.3)
    drawn = {"slugs": [r["slug"] for r in rows], "replacement_score": _widths(replacement),
             "completeness_score": _widths(completeness)}
    _save(fig, out)
    return drawn


def plot_classification_shares(classes: dict[str, dict], out: str | Path) -> dict:
    """Stacked bars of the judge's category shares, overall and per sampled layer, per unit."""
    plt = _pyplot()
    categories = sorted({c for data in classes.values() for c in data["overall"]} - {"unparsed"})
    categories += ["unparsed"] if any("unparsed" in d["overall"] for d in classes.values()) else []
    palette = plt.get_cmap("tab10")
    colors = {c: ("#cccccc" if c == "unparsed" else palette(i)) for i, c in enumerate(categories)}
    n_rows = max(len(d["per_layer"]) + 1 for d in classes.values())
    fig, axes = plt.subplots(1, len(classes), figsize=(6 * len(classes), 1.8 + 0.32 * n_rows),
                             constrained_layout=True, squeeze=False)
    drawn = {}
    for ax, (unit, data) in zip(axes[0], classes.items()):
        labels = ["overall"] + [f"layer {layer}" for layer in data["per_layer"]]
        table = [data["overall"]] + list(data["per_layer"].values())
        left = np.zeros(len(labels))
        drawn[unit] = {"labels": labels, "n": data["n"]}
        for category in categories:
            widths = np.array([row.get(category, 0.0) for row in table])
            bars = ax.barh(range(len(labels)), widths, left=left, color=colors[category], label=category)
            drawn[unit][category] = _widths(bars)
            left += widths
        ax.set_yticks(range(len(labels)), labels, fontsize=8 if len(labels) > 16 else 10)
        ax.invert_yaxis()
        ax.set(xlim=(0, 1), xlabel="share of classified units", title=f"{UNIT_NAMES.get(unit, unit)} (n = {data['n']})")
        ax.grid(axis="x", alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=len(categories), fontsize=9)
    fig.suptitle("Categories the LLM judge gave")
    _save(fig, out)
    return drawn


def plot_detection_scores(detection: dict[str, dict], out: str | Path) -> dict:
    """Per-unit detection balanced accuracy and AUROC: features vs neurons, each with the LLM
    explanation and with the non-LLM one (box, and every unit as a dot; 0.5 is chance)."""
    plt = _pyplot()
    groups = [(unit, source) for unit in detection for source in ("llm", "trivial") if source in detection[unit]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True)
    rng = np.random.default_rng(0)  # jitter only; seeded so the figure is reproducible
    drawn: dict = {"groups": [f"{unit}/{source}" for unit, source in groups]}
    for ax, metric, title in ((axes[0], "balanced_accuracy", "Detection balanced accuracy per unit"),
                              (axes[1], "auroc", "Detection AUROC per unit (from yes/no log-probabilities)")):
        series = [detection[unit][source][metric] for unit, source in groups]
        positions = np.arange(1, len(groups) + 1)
        drawn[metric] = {}
        for position, (unit, source), values in zip(positions, groups, series):
            if values:
                ax.boxplot([values], positions=[position], widths=0.5, showfliers=False,
                           medianprops={"color": "k"}, boxprops={"color": UNIT_COLORS.get(unit, "k")})
            dots = ax.scatter(position + rng.uniform(-0.15, 0.15, len(values)), values, s=14, alpha=0.7,
                              color=UNIT_COLORS.get(unit, "k"), marker="o" if source == "llm" else "s",
                              edgecolors="none")
            drawn[metric][f"{unit}/{source}"] = sorted(float(v) for v in dots.get_offsets()[:, 1])
        ax.axhline(0.5, color="k", ls="--", lw=1, alpha=0.6, label="chance")
        ax.set_xticks(positions, [f"{UNIT_NAMES.get(u, u)}\n{SOURCE_NAMES[s]}\n(n = {len(v)})"
                                  for (u, s), v in zip(groups, series)], fontsize=8)
        ax.set(ylim=(-0.03, 1.03), title=title, ylabel={"auroc": "AUROC"}.get(metric, metric.replace("_", " ")))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("How well each explanation predicts where its unit fires (held-out examples)")
    _save(fig, out)
    return drawn
