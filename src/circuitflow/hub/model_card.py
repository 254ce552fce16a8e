"""The published repo's model card: YAML metadata the Hub indexes, then the run's measured figures.

Rendered with `huggingface_hub.ModelCard` / `ModelCardData`, so the metadata block is the one
the Hub parses (base_model, library_name, tags, license, datasets), plus a `circuitflow` block
with the headline figures for programs. Everything comes from the run's own outputs; nothing
is typed in by hand and nothing depends on the clock (an unchanged run renders the same card).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from circuitflow.config import StageHubRepoSettings
from circuitflow.data.dataset import HUB_PREFIX
from circuitflow.hub.shareable import shareable
from circuitflow.hub.upload import MARKER
from circuitflow.model.source import resolve_source

TAGS = ["circuit-tracer", "circuitflow", "transcoder", "interpretability", "attribution-graphs"]
KIND_NAMES = {"transcoder_set": "per-layer transcoders (PLT)", "cross_layer_transcoder": "a cross-layer transcoder (CLT)"}


def _number(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fidelity_table(fidelity: dict) -> list[str]:
    lines = ["| layer | FVU | L0 | dead | loss recovered | KL (spliced) |", "|---:|---:|---:|---:|---:|---:|"]
    for row in [*fidelity["layers"], fidelity["all_layers"]]:
        lines.append(f"| {row['layer']} | {_number(row['fvu'])} | {_number(row['l0'], 1)} "
                     f"| {_number(row['dead_fraction'])} | {_number(row.get('loss_recovered'))} "
                     f"| {_number(row.get('kl_spliced'), 4)} |")
    return lines


def _graph_table(graph_scores: dict) -> list[str]:
    lines = ["| prompt | replacement | completeness | top target |", "|---|---:|---:|---|"]
    for slug, scores in sorted(graph_scores.items()):
        target = (scores.get("expected_target") or {}).get("token")
        lines.append(f"| `{slug}` | {_number(scores['replacement_score'])} | {_number(scores['completeness_score'])} "
                     f"| {'n/a' if target is None else repr(target)} |")
    return lines


def _interp_lines(interp: dict) -> list[str]:
    lines = []
    classified = interp.get("feature_classifications.json")
    if classified:
        shares = classified["shares"]["overall"]
        lines += [f"Classified by {classified['metadata']['model']}: {classified['metadata']['n_classified']} features.",
                  "", "| category | share |", "|---|---:|"]
        lines += [f"| {category} | {share:.0%} |" for category, share in sorted(shares.items())]
        lines.append("")
    scored = interp.get("scores.json")
    if scored:
        overall = scored["summary"]["overall"]
        lines += [f"Detection scoring by {scored['metadata']['model']} (balanced accuracy, 0.5 is chance):", "",
                  "| explanation | features | judgements | balanced accuracy | AUROC |", "|---|---:|---:|---:|---:|"]
        for source, name in (("llm", "LLM explanation"), ("trivial", "top tokens + logits (no LLM)")):
            detection = overall[source]["detection"]
            lines.append(f"| {name} | {detection['n_features']} | {detection['n']} "
                         f"| {_number(detection['balanced_accuracy'])} | {_number(detection['auroc'])} |")
        lines.append("")
    return lines


def card_metadata(settings: StageHubRepoSettings, set_config: dict, fidelity: dict | None, dataset: dict,
                  graph_scores: dict | None) -> dict:
    """The `circuitflow` block of the card's YAML: headline figures, machine-readable (fidelity
    figures are null for an imported set that was not measured)."""
    fidelity = fidelity or {"all_layers": {}}
    return {
        "run": settings.run,
        "kind": set_config["model_kind"],
        "layers": sorted(int(layer) for layer in set_config["layers"]),
        "n_features_per_layer": set_config["n_features"],
        "activation": set_config["activation"],
        "source": set_config.get("source"),
        "mean_fvu": None if fidelity.get("mean_fvu") is None else round(fidelity["mean_fvu"], 6),
        "mean_l0": None if fidelity["all_layers"].get("l0") is None else round(fidelity["all_layers"]["l0"], 3),
        "max_dead_fraction": (None if fidelity.get("max_dead_fraction") is None
                              else round(fidelity["max_dead_fraction"], 6)),
        "loss_recovered_all_layers": (None if fidelity["all_layers"].get("loss_recovered") is None
                                      else round(fidelity["all_layers"]["loss_recovered"], 6)),
        "dataset_sha256": dataset.get("source_sha256"),
        "graph_scores": None if graph_scores is None else {
            slug: {"replacement": round(s["replacement_score"], 6), "completeness": round(s["completeness_score"], 6)}
            for slug, s in sorted(graph_scores.items())},
    }


def render_model_card(settings: StageHubRepoSettings, set_config: dict, fidelity: dict | None, dataset: dict,
                      training: dict[str, dict], feature_metadata: dict, graph_scores: dict | None,
                      interp: dict[str, Any]) -> str:
    """The README.md of the repo (a `huggingface_hub.ModelCard`'s text); `set_config` is the
    published config.yaml."""
    from huggingface_hub import ModelCard, ModelCardData

    source = dataset.get("source", "")
    data = ModelCardData(
        base_model=settings.base_model, library_name="circuit-tracer", tags=TAGS, license=settings.license,
        datasets=[source[len(HUB_PREFIX):]] if source.startswith(HUB_PREFIX) else None,
        circuitflow=card_metadata(settings, set_config, fidelity, dataset, graph_scores))
    repo, kind, scan = settings.repo_id, set_config["model_kind"], set_config["scan"]  # scan: repo[@revision]
    first = next(iter(training.values()), {})
    splits = dataset.get("splits", {})
    trained_on = shareable(settings.model_source, Path.cwd())  # a GGUF outside the working directory: its name
    same_weights = resolve_source(settings.model_source).kind == "hub"
    lines = [
        f"# {repo}", "",
        f"{KIND_NAMES.get(kind, kind)} for [{settings.base_model}](https://huggingface.co/{settings.base_model}): "
        f"{len(set_config['layers'])} layers, {set_config['n_features']} features per layer, "
        f"`{set_config['activation']}` activation"
        + (f" (k = {set_config['k']})" if set_config.get("k") else "")
        + (", with a skip connection" if set_config.get("skip_connection") else "")
        + f", reading `{set_config['feature_input_hook']}` and writing `{set_config['feature_output_hook']}`. "
        f"Made with circuitflow (run `{settings.run}`); load it with "
        "[circuit-tracer](https://github.com/decoderesearch/circuit-tracer) to build attribution graphs.", "",
    ]
    source = set_config.get("source")
    if source:
        where = (f"[{source['repo_id']}](https://huggingface.co/{source['repo_id']}) at commit `{source['commit']}` "
                 f"(revision `{source['revision']}`)" if source.get("repo_id") else f"`{source['uri']}`")
        if settings.upload_imported_weights:
            weights = "Their weights are copied into this repo."
        elif "transcoders" in set_config:
            weights = "`config.yaml` points at the source's own weight files, so circuit-tracer loads them from there."
        else:
            weights = "Their weights are not in this repo: load the transcoders from the source."
        lines += [f"The transcoders are {where}, imported with circuitflow's `transcoder.source`; this run did not "
                  f"train them. It made the feature examples, interpretations and graphs here. {weights}", ""]
    elif not same_weights:
        lines += [f"The transcoders were trained on the activations of `{trained_on}` (the run's model source), "
                  f"not of the hub weights of `{settings.base_model}`; where those differ (a quantized GGUF, say), "
                  "the transcoders fit the hub weights slightly worse than the figures below.", ""]
    lines += [
        "## Load it", "",
        "```python", "from circuit_tracer import ReplacementModel", "",
        f'model = ReplacementModel.from_pretrained("{settings.base_model}", "{scan}", '
        'backend="nnsight")', "```", "",
        "or build and view a graph from the command line:", "",
        "```sh",
        f'circuit-tracer attribute -t {scan} -m {settings.base_model} --backend nnsight \\',
        '    -p "The capital of France is" --slug france --graph_file_dir graphs --server',
        "```", "",
        "The frontend reads feature examples from this repo's `features/` folder "
        "(`index.json.gz` and `layer_<l>.bin`, fetched with Range requests). The `graphs/` folder holds "
        "this run's graphs with `scan` set to this repo: download it and serve it with "
        "`circuit-tracer start-server --graph_file_dir graphs`.", "",
        "## Measured", "",
    ]
    if fidelity:
        lines += [
            f"On {fidelity['windows']} held-out validation windows of {fidelity['context_length']} tokens "
            f"(next-token losses over {fidelity['splice_windows']} of them). FVU is the fraction of the MLP output's "
            "variance left unexplained; dead features never fired on the evaluation tokens; loss recovered compares "
            "the spliced model's next-token loss with the clean one and with the MLP zero-ablated (1 is perfect). "
            "The last row replaces every MLP at once.", "",
            *_fidelity_table(fidelity), "",
        ]
    else:
        lines += ["The imported set's fidelity was not measured in this run (`evaluation.imported_set: false`).", ""]
    if graph_scores:
        lines += ["Attribution graphs of this run (circuit-tracer's replacement and completeness scores, 1 is "
                  "perfect):", "", *_graph_table(graph_scores), ""]
    interp_lines = _interp_lines(interp)
    if interp_lines:
        lines += ["## Interpretations", "",
                  "`interp/` holds each sampled feature's classification, explanation and detection scores.", "",
                  *interp_lines]
    lines += [
        "## Training", "",
        f"- Data: `{source}` (sha256 `{dataset.get('source_sha256')}`), "
        + ", ".join(f"{name} {split['tokens']:,} tokens (sha256 `{split['sha256'][:16]}…`)"
                    for name, split in sorted(splits.items()))
        + f", windows of {dataset.get('context_length')} tokens, seed {dataset.get('seed')}.",
        *([f"- {first.get('steps', 'n/a')} steps of {first.get('training', {}).get('batch_size', 'n/a')} tokens per "
           f"{'layer' if kind == 'transcoder_set' else 'step over every layer'}; each training setting is in "
           "`metrics/training/`."] if not source else ["- Not trained here: imported (see above)."]),
        f"- Feature examples from {feature_metadata.get('total_tokens', 'n/a'):,} validation tokens "
        "(`feature_metadata.json`).",
        "",
        "## Files", "",
        "| path | what |", "|---|---|",
        "| `config.yaml` | circuit-tracer's transcoder config (`model_kind`, hooks, `scan`, per-layer `hf://` URIs) |",
        "| `*.safetensors`, `*.architecture.json` | the weights and each file's architecture |",
        "| `features/` | packed feature examples for the frontend |",
        "| `feature_metadata.json` | every live feature's frequency and activation range |",
        "| `metrics/` | validation fidelity (`fidelity.json`, `fidelity.csv`) and training curves |",
        "| `graphs/` | attribution graphs with `scan` set to this repo |",
        "| `interp/` | classifications, explanations and detection scores (when published) |",
        "| `dataset/summary.json` | the corpus, its hash and the split sizes |",
        f"| `{MARKER}` | the files circuitflow published here: publishing again replaces or deletes only these |",
        "",
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))
