"""What the Snakefile needs at parse time: the run's plan and each rule's params (torch-free).

`plan_workflow` reads the validated config once: output folders, the model's facts (from the
materialized folder when it exists, else from the source, without loading weights), the
resolved layer lists and the prompts, with the cross-field checks that the schema cannot
express. The rule files only call the functions here; none of them holds logic of its own.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from circuitflow.config import (
    ConfigError,
    HubSettings,
    PromptSettings,
    WorkflowSettings,
    as_params,
    build,
    config_value,
    settings_for,
)
from circuitflow.config_rules import (
    check_choice_names,
    check_cross_layer,
    check_cross_layer_memory,
    check_sparsity,
    cross_layer_memory,
)
from circuitflow.data.dataset import local_source_files
from circuitflow.data.prompts import CONFIG_ORIGIN, discover_prompts
from circuitflow.model.facts import ModelFacts, read_model_facts
from circuitflow.model.families import check_attributable, check_hooks
from circuitflow.model.source import resolve_source, source_facts
from circuitflow.paths import GRAPHS_LINK, RunPaths, per_layer, per_prompt
from circuitflow.transcoders.imported import (
    CROSS_LAYER,
    PublishedSet,
    PublishedSetError,
    SetSource,
    check_against_model,
    check_model_name,
    model_source_for,
    parse_set_source,
    published_set,
)


@dataclass(frozen=True)
class WorkflowPlan:
    run: str
    results: str  # results/<run>
    model_dir: str  # resources/models/<model.name>
    n_layers: int
    layers: tuple[int, ...]  # activations.layers, resolved: layers with a transcoder
    kind: str  # transcoder.kind: plt (one transcoder per layer) or clt (one cross-layer transcoder)
    feature_layers: tuple[int, ...]  # features.layers, resolved (a subset of `layers`)
    interp_layers: tuple[int, ...]  # every interp.layer_step-th of `feature_layers`: sampled for the judge
    prompts: dict[str, str]  # slug -> origin (a file path, or config:attribution.prompts.<slug>)
    model_source: str | None = None  # model.source, or the imported set's model_name
    set_source: SetSource | None = None  # transcoder.source: a published set instead of training
    evaluate: bool = True  # evaluate_transcoders is part of the default target (always, unless imported)
    architecture: str | None = None  # the model's architecture, when known at parse time
    clt_memory_mb: int = 16000  # transcoder.clt_memory_gb: the clt training job's memory request

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.results)

    @property
    def imported(self) -> bool:
        return self.set_source is not None

    @property
    def complete(self) -> bool:
        """Every layer has a transcoder (what attribution needs)."""
        return self.layers == tuple(range(self.n_layers))


def model_folder(config: dict) -> str:
    return f"resources/models/{config_value(config, 'model.name')}"


def _model_facts(config: dict, settings: WorkflowSettings, model_source: str) -> ModelFacts | None:
    """The model's facts, or None when only `model.n_layers` is known (a hub model offline)."""
    materialized = Path(model_folder(config))
    if (materialized / "config.json").is_file():
        return read_model_facts(materialized)
    source = resolve_source(model_source, config_value(config, "model.revision"))
    if settings.n_layers is not None and source.kind == "hub":
        return None
    return source_facts(source)


def _resolve(wanted, available: list[int], key: str, what: str) -> tuple[int, ...]:
    if wanted == "all":
        return tuple(available)
    outside = sorted(set(wanted) - set(available))
    if outside:
        raise ConfigError(f"{key} {outside}: {what} {available}")
    return tuple(sorted(set(wanted)))


def plan_workflow(config: dict) -> WorkflowPlan:
    """Resolve the validated config into the run's plan, failing early with the key named."""
    settings = build(WorkflowSettings, config)
    if f"results/{settings.run}" == GRAPHS_LINK:
        raise ConfigError(f"run {settings.run!r} is taken: {GRAPHS_LINK}/ links to a run's graphs; name the run "
                          "anything else")
    set_source = published = None
    if settings.transcoder_source is not None:
        set_source = parse_set_source(settings.transcoder_source)
        published = _published_set(set_source)
    model_source = _model_source(config, published)
    facts = _model_facts(config, settings, model_source)
    n_layers = settings.n_layers if settings.n_layers is not None else facts.n_layers
    if published is not None:
        layers, kind = _imported_layers(config, published, facts, model_source)
    else:
        layers, kind = _trained_layers(config, n_layers, facts.d_model if facts is not None else None,
                                       settings.clt_memory_gb)
    feature_layers = _resolve(config_value(config, "features.layers"), list(layers), "features.layers",
                              "have no transcoder; transcoders are trained for activations.layers")
    interp_layers = feature_layers[::config_value(config, "interp.layer_step")]
    for key in ("interp.categories", "interp.domain_types", "interp.mechanisms"):
        check_choice_names(key, config_value(config, key))
    context = config_value(config, "dataset.context_length")
    if facts is not None and facts.context_length is not None and context > facts.context_length:
        raise ConfigError(f"dataset.context_length {context} exceeds the model's context of "
                          f"{facts.context_length} positions")
    prompt_settings = build(PromptSettings, config)
    prompts = discover_prompts(prompt_settings.prompts_dir, prompt_settings.prompts)
    return WorkflowPlan(settings.run, f"results/{settings.run}", model_folder(config), n_layers, layers, kind,
                        feature_layers, interp_layers, prompts, model_source, set_source,
                        evaluate=set_source is None or settings.evaluate_imported_set,
                        architecture=facts.architecture if facts is not None else None,
                        clt_memory_mb=round(settings.clt_memory_gb * 1000))


def _published_set(source: SetSource) -> PublishedSet:
    try:
        return published_set(source)
    except PublishedSetError as error:
        raise ConfigError(str(error)) from None


def _model_source(config: dict, published: PublishedSet | None) -> str:
    configured = config_value(config, "model.source")
    if published is not None:
        return model_source_for(configured, published)
    if configured is None:
        raise ConfigError("model.source is null: set it to the model to explain (a hub id, a local folder or a "
                          ".gguf), or set transcoder.source to a published set whose model_name names it")
    return configured


def _trained_layers(config: dict, n_layers: int, d_model: int | None,
                    memory_gb: float) -> tuple[tuple[int, ...], str]:
    """activations.layers resolved against the model, and the transcoder keys that must agree
    (for a clt, with the model's width, that its training fits transcoder.clt_memory_gb)."""
    layers = _resolve(config_value(config, "activations.layers"), list(range(n_layers)), "activations.layers",
                      "out of range, the model has layers")
    check_sparsity(*(config_value(config, f"transcoder.{key}") for key in ("activation", "k", "n_features")))
    kind = config_value(config, "transcoder.kind")
    if kind == "clt":
        check_cross_layer(layers, *(config_value(config, f"transcoder.{key}")
                                    for key in ("activation", "skip_connection", "jumprelu_training")))
        if d_model is not None:
            check_cross_layer_memory(clt_training_memory(config, len(layers), d_model), memory_gb,
                                     config_value(config, "transcoder.n_features"), len(layers))
    return layers, kind


def _imported_layers(config: dict, published: PublishedSet, facts: ModelFacts | None,
                     model_source: str) -> tuple[tuple[int, ...], str]:
    """An imported set covers layers 0..n-1 of the model (checked here); its kind is its own."""
    check_against_model(published, facts, model_source)
    check_hooks(facts.architecture if facts is not None else None,
                (published.feature_input_hook, published.feature_output_hook), published.origin)
    warning = check_model_name(published, model_source, config_value(config, "transcoder.allow_model_mismatch"))
    if warning:
        print(f"circuitflow: warning: {warning} (transcoder.allow_model_mismatch is true)", file=sys.stderr)
    return tuple(range(published.n_layers)), "clt" if published.kind == CROSS_LAYER else "plt"


def clt_training_memory(config: dict, n_layers: int, d_model: int) -> dict:
    """`cross_layer_memory` of the configured CLT over `n_layers` layers of width `d_model`."""
    return cross_layer_memory(
        n_layers, d_model, config_value(config, "transcoder.n_features"),
        shuffle_row_groups=config_value(config, "transcoder.shuffle_row_groups"),
        row_group_tokens=config_value(config, "activations.row_group_tokens"),
        cache_bytes=2 if config_value(config, "activations.dtype") == "float16" else 4,
        eval_tokens=config_value(config, "transcoder.eval_tokens"),
        calibration_tokens=config_value(config, "transcoder.calibration_tokens"))


def imported_set_inputs(plan: WorkflowPlan) -> dict[str, str]:
    """What import_transcoder_set reads: the download receipt of a hub set (the download rule
    makes it), or a local set's config.yaml (editing it reruns the import)."""
    source = plan.set_source
    return {"receipt": str(source.receipt)} if source.on_hub else {"config": str(source.folder / "config.yaml")}


def cross_layer_weights(plan: WorkflowPlan) -> list[str]:
    """What train_cross_layer_transcoder writes: the set's files for a clt, none otherwise."""
    return transcoder_files(plan)["weights"] if plan.kind == "clt" else []


def training_groups(config: dict, plan: WorkflowPlan) -> dict[str, tuple[int, ...]]:
    """The plt training jobs: transcoder.layers_per_job consecutive layers each, keyed by their
    name "<first>-<last>" (the {group} wildcard). None for a clt or an imported set."""
    if plan.imported or plan.kind != "plt":
        return {}
    size = config_value(config, "transcoder.layers_per_job")
    chunks = [plan.layers[i:i + size] for i in range(0, len(plan.layers), size)]
    return {f"{chunk[0]}-{chunk[-1]}": tuple(chunk) for chunk in chunks}


def trained_set_files(config: dict, plan: WorkflowPlan) -> list[str]:
    """What write_transcoder_set reads: the plt training jobs' folders, or the CLT's files."""
    groups = training_groups(config, plan)
    if groups:
        return [plan.paths.training_group.format(group=group) for group in groups]
    files = transcoder_files(plan)
    return [*files["weights"], *files["architectures"]]


def trained_layer_files(plan: WorkflowPlan) -> dict[str, list[str]]:
    """Each trained plt layer's weights, architecture and metrics files, which
    write_transcoder_set links into place from the training jobs' folders (none otherwise)."""
    paths = plan.paths
    patterns = {"weights": paths.layer_weights, "architectures": paths.layer_architecture,
                "metrics": paths.layer_metrics}
    trained = not plan.imported and plan.kind == "plt"
    return {name: per_layer(pattern, plan.layers) if trained else [] for name, pattern in patterns.items()}


def training_metrics_files(plan: WorkflowPlan) -> list[str]:
    """The training metrics of the set: one file per layer (plt), or the CLT's one (none when imported)."""
    if plan.imported:
        return []
    if plan.kind == "clt":
        return [plan.paths.clt_metrics]
    return per_layer(plan.paths.layer_metrics, plan.layers)


def graph_score_files(plan: WorkflowPlan) -> list[str]:
    """Each prompt's graph scores, when the set is complete (graphs exist only then)."""
    return per_prompt(plan.paths.graph_scores, plan.prompts) if plan.complete else []


def transcoder_files(plan: WorkflowPlan) -> dict[str, list[str]]:
    """The transcoder set's weights and architecture files, for either kind (an imported set's
    files stay where import_transcoder_set found them: none here)."""
    paths = plan.paths
    if plan.imported:
        return {"weights": [], "architectures": []}
    if plan.kind == "clt":
        return {"weights": per_layer(paths.clt_encoder, plan.layers) + per_layer(paths.clt_decoder, plan.layers),
                "architectures": [paths.clt_architecture]}
    return {"weights": per_layer(paths.layer_weights, plan.layers),
            "architectures": per_layer(paths.layer_architecture, plan.layers)}


def rule_params(rule: str, config: dict, plan: WorkflowPlan) -> dict:
    """The settings of `rule` as plain data for its `params` (derived fields from the plan)."""
    hub = build(HubSettings, config)
    derived = {
        "prepare_model": {"source": plan.model_source},
        "import_transcoder_set": {"model_source": plan.model_source},
        "cache_activations": {"layers": plan.layers},
        "train_cross_layer_transcoder": {"layers": plan.layers},
        "write_transcoder_set": {"layers": plan.layers},
        "evaluate_transcoders": {"layers": plan.layers},
        "collect_features": {"layers": plan.feature_layers, "source_id": f"{plan.run}-transcoders"},
        "collect_neurons": {"layers": plan.feature_layers, "source_id": f"{plan.run}-neurons"},
        "select_features": {"sample_layers": plan.interp_layers},
        "stage_hub_repo": {"base_model": hub_base_model(config, plan), "model_source": plan.model_source},
        "upload_to_hub": {"commit_message": config_value(config, "hub.commit_message")
                          or f"circuitflow: publish run {plan.run}"},
        "assemble_hub_graphs": {"scan": hub_scan(hub)},
    }.get(rule, {})
    return as_params(settings_for(rule, config, **derived))


def dataset_files(config: dict) -> list[str]:
    """A local corpus file is an input, so editing it reruns the dataset (hub ids are not files)."""
    return local_source_files(config_value(config, "dataset.source"))


def prompt_files(plan: WorkflowPlan, slug: str) -> list[str]:
    """The prompt's file, so editing it reruns its graph (config prompts have no file)."""
    origin = plan.prompts[slug]
    return [] if origin.startswith(CONFIG_ORIGIN) else [origin]


def prompt_param(config: dict, plan: WorkflowPlan, slug: str) -> dict:
    """What attribute_prompt reads: the origin, and the text itself for a config prompt."""
    origin = plan.prompts[slug]
    text = build(PromptSettings, config).prompts[slug] if origin.startswith(CONFIG_ORIGIN) else None
    return {"slug": slug, "origin": origin, "text": text}


def require_complete_set(plan: WorkflowPlan) -> None:
    """Attribution replaces every MLP: say which layers lack a transcoder before any job runs."""
    if not plan.complete:
        missing = sorted(set(range(plan.n_layers)) - set(plan.layers))
        raise ConfigError(
            f"attribution graphs need a transcoder for every layer, but activations.layers leaves out "
            f"layer(s) {missing} of the model's {plan.n_layers}; set activations.layers: all, or build "
            "only the targets `transcoders` and `features`")


def require_attributable(config: dict, plan: WorkflowPlan) -> None:
    """Graphs need a family circuit-tracer's backend attributes: say so before any job runs."""
    check_attributable(plan.architecture, config_value(config, "attribution.backend"))


CAPTION_KEYS = ("transcoder.steps", "transcoder.batch_size", "neurons.n_per_layer", "interp.layer_step",
                "interp.n_per_layer")


def caption_values(config: dict) -> dict:
    """The config values the report's captions quote, defaults filled in from the schema (the
    config Snakemake hands a caption holds only the sections a config file sets)."""
    return {key: config_value(config, key) for key in CAPTION_KEYS}


def hub_base_model(config: dict, plan: WorkflowPlan) -> str | None:
    """The hub id the transcoders belong to: hub.base_model, else model.source if it is one."""
    base_model = config_value(config, "hub.base_model")
    if base_model is not None:
        return base_model
    source = resolve_source(plan.model_source, config_value(config, "model.revision"))
    return source.location if source.kind == "hub" else None


def hub_scan(hub: HubSettings) -> str | None:
    """circuit-tracer's scan for a hub repo: 'owner/name', or 'owner/name@revision' off main
    (what its loader and frontend both read)."""
    if hub.repo_id is None:
        return None
    return hub.repo_id if hub.revision == "main" else f"{hub.repo_id}@{hub.revision}"


def require_hub(config: dict, plan: WorkflowPlan) -> HubSettings:
    """Publishing needs hub.repo_id and a base model id: say which key is missing before any job."""
    hub = build(HubSettings, config)
    if hub.repo_id is None:
        raise ConfigError("publishing needs hub.repo_id: set it to the model repo to create or update, e.g. "
                          "--config hub='{repo_id: your-name/" + plan.run + "-transcoders}'")
    if hub_base_model(config, plan) is None:
        raise ConfigError(f"publishing needs hub.base_model, the Hugging Face id of the model the transcoders "
                          f"belong to: model.source {plan.model_source!r} is not a hub id "
                          "(e.g. hub.base_model: HuggingFaceTB/SmolLM2-135M-Instruct)")
    return hub


def hub_repo_inputs(config: dict, plan: WorkflowPlan) -> dict[str, list[str] | str]:
    """What stage_hub_repo puts in the repo, as named inputs: the set and its files, the packed
    features and their metadata, the measured figures, the shareable graphs (when the set is
    complete) and the features' interp files (unless hub.include_interp is false)."""
    hub = require_hub(config, plan)
    paths, files = plan.paths, transcoder_files(plan)
    inputs: dict[str, list[str] | str] = {
        "transcoders": paths.transcoder_set,
        "weights": files["weights"],
        "architectures": files["architectures"],
        "training_metrics": training_metrics_files(plan),
        "packed": paths.packed_features,
        "feature_metadata": paths.metadata("features"),
        "dataset": paths.dataset_summary,
    }
    if plan.evaluate:  # an imported set is measured only when evaluation.imported_set asks
        inputs["fidelity"] = paths.fidelity
        inputs["fidelity_table"] = paths.fidelity_table
    if plan.complete:
        inputs["graphs"] = paths.graphs_hub
    if hub.include_interp:
        inputs["interp"] = paths.interp_outputs("features")
    return inputs
