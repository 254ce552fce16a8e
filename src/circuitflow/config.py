"""One mapping from the validated config to the typed settings of each rule.

``schema.yaml`` (beside this file; ``workflow/schemas/config.schema.yaml`` links to it) is the
single source of truth for every knob and its default. Each settings field below names the
config key it comes from with `knob`, which takes its default from the schema, so a dataclass
cannot disagree with the schema (``tests/unit/test_config.py`` checks that every schema key maps
to a field and back). Fields that are not knobs are `derived` from other keys or from the model
at parse time (the resolved layer list, the feature source id). Rules that span several keys
live in `circuitflow.config_rules`.

The workflow calls `settings_for(rule, config)` at parse time and passes the result to the
rule's script as plain data (`as_params`), so Snakemake's params-change trigger sees every
value; the script rebuilds the same object with `from_params`. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# ConfigError is defined beside the cross-key rules (config_rules) and raised from here too.
from circuitflow.config_rules import ConfigError

SCHEMA_PATH = Path(__file__).with_name("schema.yaml")


@functools.cache
def schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))


def schema_node(path: str) -> dict:
    node = schema()
    for part in path.split("."):
        try:
            node = node["properties"][part]
        except KeyError:
            raise KeyError(f"{path!r} is not a key of {SCHEMA_PATH}") from None
    return node


def schema_leaves(node: dict | None = None, prefix: str = "") -> dict[str, Any]:
    """Every leaf key of the schema ('transcoder.k', ...) -> its default (MISSING when required)."""
    node = schema() if node is None else node
    leaves: dict[str, Any] = {}
    for name, child in node.get("properties", {}).items():
        path = f"{prefix}{name}"
        if child.get("type") == "object" and "properties" in child:
            leaves.update(schema_leaves(child, f"{path}."))
        else:
            leaves[path] = child.get("default", dataclasses.MISSING)
    return leaves


def knob(path: str):
    """A settings field read from config key `path`, with the schema's default (if any)."""
    default = schema_node(path).get("default", dataclasses.MISSING)
    metadata = {"config": path}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def derived(how: str, resolves: str | None = None):
    """A settings field computed at parse time (`how` says from what); `resolves` names the
    config key it is the resolved form of ('all' -> a list of layers), if any."""
    return field(metadata={"derived": how, **({"resolves": resolves} if resolves else {})})


def validate_config(config: dict, validate) -> None:
    """Validate with Snakemake's `validate` (which also fills in the schema's defaults); on
    failure raise one line naming the key, the bad value and what is allowed, instead of
    Snakemake's dump of the whole schema and config."""
    try:
        validate(config, str(SCHEMA_PATH))
    except Exception:  # Snakemake's WorkflowError; the message is rebuilt below
        raise ConfigError(describe_invalid(config)) from None


def describe_invalid(config: dict) -> str:
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema()).iter_errors(config))
    if error is None:
        return f"the config does not validate against {SCHEMA_PATH}"
    while error.parent is not None and error.parent.validator in ("oneOf", "anyOf"):
        error = error.parent  # "'x' is not 'all'" says less than "'all' or a list"
    where = ".".join(str(p) for p in error.absolute_path) or "the top level"
    allowed = ""
    if error.validator == "additionalProperties":
        allowed = f"; allowed keys here: {', '.join(sorted(error.schema.get('properties', {})))}"
    elif error.validator == "enum":
        allowed = f"; allowed values: {', '.join(map(repr, error.validator_value))}"
    elif error.validator in ("oneOf", "anyOf"):
        allowed = f" (allowed: {error.schema.get('description', '').strip()})"
    elif "description" in error.schema:
        allowed = f" ({error.schema['description'].strip()})"
    return f"invalid config at {where}: {error.message}{allowed} [schema: {SCHEMA_PATH.name}]"


# --------------------------------------------------------------------------- per-rule settings


@dataclass(frozen=True)
class WorkflowSettings:
    """Parse-time facts: output folders and the model's layer count."""

    run: str = knob("run")
    model_name: str = knob("model.name")
    n_layers: int | None = knob("model.n_layers")
    transcoder_source: str | None = knob("transcoder.source")
    evaluate_imported_set: bool = knob("evaluation.imported_set")
    # the clt job's memory request, checked against the config's estimate (not a param: no rerun)
    clt_memory_gb: float = knob("transcoder.clt_memory_gb")


@dataclass(frozen=True)
class PromptSettings:
    """Where attribution prompts come from (discovered at parse time)."""

    prompts_dir: str | None = knob("attribution.prompts_dir")
    prompts: dict = knob("attribution.prompts")


@dataclass(frozen=True)
class PrepareModelSettings:
    source: str = derived("model.source, or the model_name of the set transcoder.source names",
                          resolves="model.source")
    revision: str | None = knob("model.revision")
    dtype: str = knob("model.dtype")


@dataclass(frozen=True)
class PrepareDatasetSettings:
    source: str = knob("dataset.source")
    text_field: str = knob("dataset.text_field")
    chat_field: str | None = knob("dataset.chat_field")
    domain_field: str | None = knob("dataset.domain_field")
    hub_split: str = knob("dataset.hub_split")
    hub_config: str | None = knob("dataset.hub_config")
    validation_fraction: float = knob("dataset.validation_fraction")
    context_length: int = knob("dataset.context_length")
    train_tokens: int | None = knob("dataset.train_tokens")
    validation_tokens: int | None = knob("dataset.validation_tokens")
    shuffle_buffer: int = knob("dataset.shuffle_buffer")
    seed: int = knob("seed")


@dataclass(frozen=True)
class CacheActivationsSettings:
    layers: tuple[int, ...] = derived("resolved against the model", resolves="activations.layers")
    dtype: str = knob("activations.dtype")
    batch_size: int = knob("activations.batch_size")
    row_group_tokens: int = knob("activations.row_group_tokens")
    model_dtype: str = knob("model.dtype")
    device: str = knob("device")


@dataclass(frozen=True)
class TranscoderArchitecture:
    """What a transcoder *is* (saved beside its weights); training settings are apart."""

    activation: str = knob("transcoder.activation")
    n_features: int = knob("transcoder.n_features")
    k: int = knob("transcoder.k")
    skip_connection: bool = knob("transcoder.skip_connection")


@dataclass(frozen=True)
class TrainingSettings:
    """How a transcoder is trained (written into its metrics, not into the weights)."""

    steps: int = knob("transcoder.steps")
    batch_size: int = knob("transcoder.batch_size")
    lr: float = knob("transcoder.lr")
    warmup_steps: int = knob("transcoder.warmup_steps")
    final_lr_fraction: float = knob("transcoder.final_lr_fraction")
    auxk_alpha: float = knob("transcoder.auxk_alpha")
    dead_tokens: int = knob("transcoder.dead_tokens")
    l1_coefficient: float = knob("transcoder.l1_coefficient")
    eval_tokens: int = knob("transcoder.eval_tokens")
    shuffle_row_groups: int = knob("transcoder.shuffle_row_groups")
    log_every_s: float = knob("transcoder.log_every_s")
    jumprelu_training: str = knob("transcoder.jumprelu_training")
    ste_bandwidth: float = knob("transcoder.ste_bandwidth")
    clt_sparsity: str = knob("transcoder.clt_sparsity")
    clt_layer_weight_exponent: float = knob("transcoder.clt_layer_weight_exponent")
    calibration_tokens: int = knob("transcoder.calibration_tokens")
    checkpoint_every: int = knob("transcoder.checkpoint_every")
    resample_every: int = knob("transcoder.resample_every")
    resample_until_fraction: float = knob("transcoder.resample_until_fraction")
    seed: int = knob("seed")
    device: str = knob("device")


@dataclass(frozen=True)
class TrainTranscoderSettings:
    architecture: TranscoderArchitecture = field(default_factory=TranscoderArchitecture)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    # how the workflow groups layers into jobs (circuitflow.workflow.training_groups); no effect on the weights
    layers_per_job: int = knob("transcoder.layers_per_job")


@dataclass(frozen=True)
class TrainCrossLayerTranscoderSettings:
    layers: tuple[int, ...] = derived("resolved against the model", resolves="activations.layers")
    architecture: TranscoderArchitecture = field(default_factory=TranscoderArchitecture)
    training: TrainingSettings = field(default_factory=TrainingSettings)


@dataclass(frozen=True)
class WriteTranscoderSetSettings:
    layers: tuple[int, ...] = derived("resolved against the model", resolves="activations.layers")
    kind: str = knob("transcoder.kind")
    scan: str = knob("attribution.scan")


@dataclass(frozen=True)
class DownloadTranscoderSetSettings:
    """A published set on the Hugging Face hub, downloaded once (transcoder.source hf://...)."""

    source: str = knob("transcoder.source")


@dataclass(frozen=True)
class ImportTranscoderSetSettings:
    """A published circuit-tracer set used instead of trained transcoders (transcoder.source)."""

    model_source: str = derived("model.source, or the set's model_name", resolves="model.source")
    source: str = knob("transcoder.source")
    lazy_encoder: bool = knob("transcoder.lazy_encoder")
    lazy_decoder: bool = knob("transcoder.lazy_decoder")
    allow_model_mismatch: bool = knob("transcoder.allow_model_mismatch")
    k: int = knob("transcoder.k")
    scan: str = knob("attribution.scan")


@dataclass(frozen=True)
class EvaluateTranscodersSettings:
    layers: tuple[int, ...] = derived("resolved against the model", resolves="activations.layers")
    windows: int = knob("evaluation.windows")
    splice_windows: int = knob("evaluation.splice_windows")
    batch_size: int = knob("evaluation.batch_size")
    dense_fraction: float = knob("evaluation.dense_fraction")
    model_dtype: str = knob("model.dtype")
    device: str = knob("device")


@dataclass(frozen=True)
class CollectFeaturesSettings:
    layers: tuple[int, ...] = derived("resolved against the transcoder layers", resolves="features.layers")
    source_id: str = derived("'<run>-transcoders' (or '<run>-neurons')")
    batch_size: int = knob("features.batch_size")
    top_k: int = knob("features.top_k")
    context_before: int = knob("features.context_before")
    context_after: int = knob("features.context_after")
    dedupe: bool = knob("features.dedupe")
    n_quantiles: int = knob("features.n_quantiles")
    examples_per_quantile: int = knob("features.examples_per_quantile")
    n_random: int = knob("features.n_random")
    n_logits: int = knob("features.n_logits")
    histogram_bins: int = knob("features.histogram_bins")
    seed: int = knob("seed")
    model_dtype: str = knob("model.dtype")
    device: str = knob("device")

    @property
    def window(self) -> int:
        return self.context_before + 1 + self.context_after


@dataclass(frozen=True)
class CollectNeuronsSettings(CollectFeaturesSettings):
    n_per_layer: int = knob("neurons.n_per_layer")


@dataclass(frozen=True)
class AttributePromptSettings:
    backend: str = knob("attribution.backend")
    dtype: str = knob("attribution.dtype")
    drop_last_token_as_target: bool = knob("attribution.drop_last_token_as_target")
    max_n_logits: int = knob("attribution.max_n_logits")
    desired_logit_prob: float = knob("attribution.desired_logit_prob")
    batch_size: int = knob("attribution.batch_size")
    max_feature_nodes: int | None = knob("attribution.max_feature_nodes")
    node_threshold: float = knob("attribution.node_threshold")
    edge_threshold: float = knob("attribution.edge_threshold")
    scan: str = knob("attribution.scan")
    device: str = knob("device")


@dataclass(frozen=True)
class LLMSettings:
    """The judge's endpoint and sampling (the API key is read from `api_key_env` in circuitflow.llm)."""

    base_url: str | None = knob("llm.base_url")
    model: str = knob("llm.model")
    api_key_env: str | None = knob("llm.api_key_env")
    local_model: str = knob("llm.local_model")
    local_n_ctx: int = knob("llm.local_n_ctx")
    local_threads: int = knob("llm.local_threads")
    max_concurrency: int = knob("llm.max_concurrency")
    timeout_s: float = knob("llm.timeout_s")
    max_retries: int = knob("llm.max_retries")
    backoff_s: float = knob("llm.backoff_s")
    max_retry_wait_s: float = knob("llm.max_retry_wait_s")
    temperature: float = knob("llm.temperature")
    top_p: float = knob("llm.top_p")
    seed: int | None = knob("llm.seed")
    max_tokens: int = knob("llm.max_tokens")
    json_mode: bool = knob("llm.json_mode")
    json_schema: bool = knob("llm.json_schema")
    logprobs: bool = knob("llm.logprobs")
    max_failure_share: float = knob("llm.max_failure_share")
    max_consecutive_failures: int = knob("llm.max_consecutive_failures")
    price_per_million_prompt: float | None = knob("llm.price_per_million_prompt")
    price_per_million_completion: float | None = knob("llm.price_per_million_completion")


@dataclass(frozen=True)
class SelectFeaturesSettings:
    """Which features (or neurons) the judge works on: a seeded per-layer sample plus graph nodes."""

    sample_layers: tuple[int, ...] = derived("every interp.layer_step-th of features.layers",
                                             resolves="interp.layer_step")
    n_per_layer: int = knob("interp.n_per_layer")
    min_frequency: float = knob("interp.min_frequency")
    max_graph_features: int = knob("interp.max_graph_features")
    min_explainer_examples: int = knob("interp.min_explainer_examples")
    seed: int = knob("seed")


@dataclass(frozen=True)
class ClassifyFeaturesSettings:
    llm: LLMSettings = field(default_factory=LLMSettings)
    categories: dict = knob("interp.categories")
    domain_types: dict = knob("interp.domain_types")
    mechanisms: dict = knob("interp.mechanisms")
    explainer_examples: int = knob("interp.explainer_examples")
    max_tokens: int = knob("interp.classify_max_tokens")


@dataclass(frozen=True)
class ExplainFeaturesSettings:
    llm: LLMSettings = field(default_factory=LLMSettings)
    explainer_examples: int = knob("interp.explainer_examples")
    max_tokens: int = knob("interp.explain_max_tokens")


@dataclass(frozen=True)
class ScoreExplanationsSettings:
    llm: LLMSettings = field(default_factory=LLMSettings)
    positives: int = knob("interp.positives")
    negatives: int = knob("interp.negatives")
    hard_negative_share: float = knob("interp.hard_negative_share")
    negative_max_fraction: float = knob("interp.negative_max_fraction")
    neuron_negative_max_fraction: float = knob("interp.neuron_negative_max_fraction")
    negative_pool_windows: int = knob("interp.negative_pool_windows")
    fuzzing: bool = knob("interp.fuzzing")
    highlight_fraction: float = knob("interp.highlight_fraction")
    answer_max_tokens: int = knob("interp.answer_max_tokens")
    batch_size: int = knob("interp.scoring_batch_size")
    embedding_scorer: bool = knob("interp.embedding_scorer")
    embedding_graph_features: int | None = knob("interp.embedding_graph_features")
    shuffled_control: bool = knob("interp.shuffled_control")
    bootstrap_resamples: int = knob("interp.bootstrap_resamples")
    context_before: int = knob("features.context_before")
    context_after: int = knob("features.context_after")
    neurons_per_layer: int = knob("neurons.n_per_layer")
    seed: int = knob("seed")
    model_dtype: str = knob("model.dtype")
    device: str = knob("device")



@dataclass(frozen=True)
class HubSettings:
    """Parse-time view of publishing: whether it is configured and what it needs as inputs."""

    repo_id: str | None = knob("hub.repo_id")
    base_model: str | None = knob("hub.base_model")
    revision: str = knob("hub.revision")
    include_interp: bool = knob("hub.include_interp")


@dataclass(frozen=True)
class StageHubRepoSettings:
    run: str = knob("run")
    model_source: str = derived("model.source, or the imported set's model_name", resolves="model.source")
    base_model: str | None = derived("hub.base_model, or model.source when that is a hub id",
                                     resolves="hub.base_model")
    repo_id: str | None = knob("hub.repo_id")
    revision: str = knob("hub.revision")
    license: str | None = knob("hub.license")
    upload_imported_weights: bool = knob("hub.upload_imported_weights")


@dataclass(frozen=True)
class UploadToHubSettings:
    commit_message: str = derived("hub.commit_message, or 'circuitflow: publish run <run>'",
                                  resolves="hub.commit_message")
    repo_id: str | None = knob("hub.repo_id")
    revision: str = knob("hub.revision")
    private: bool = knob("hub.private")
    allow_existing_repo: bool = knob("hub.allow_existing_repo")


@dataclass(frozen=True)
class AssembleHubGraphsSettings:
    scan: str | None = derived("hub.repo_id, with @<revision> unless the revision is main")

# Rules whose script receives settings, and the class it receives.
RULE_SETTINGS: dict[str, type] = {
    "prepare_model": PrepareModelSettings,
    "prepare_dataset": PrepareDatasetSettings,
    "cache_activations": CacheActivationsSettings,
    "train_transcoders": TrainTranscoderSettings,
    "train_cross_layer_transcoder": TrainCrossLayerTranscoderSettings,
    "write_transcoder_set": WriteTranscoderSetSettings,
    "download_transcoder_set": DownloadTranscoderSetSettings,
    "import_transcoder_set": ImportTranscoderSetSettings,
    "evaluate_transcoders": EvaluateTranscodersSettings,
    "collect_features": CollectFeaturesSettings,
    "collect_neurons": CollectNeuronsSettings,
    "attribute_prompt": AttributePromptSettings,
    "select_features": SelectFeaturesSettings,
    "classify_features": ClassifyFeaturesSettings,
    "explain_features": ExplainFeaturesSettings,
    "score_explanations": ScoreExplanationsSettings,
    "stage_hub_repo": StageHubRepoSettings,
    "upload_to_hub": UploadToHubSettings,
    "assemble_hub_graphs": AssembleHubGraphsSettings,
}
# Settings read at parse time only (no rule receives them).
PARSE_TIME_SETTINGS: tuple[type, ...] = (WorkflowSettings, PromptSettings, HubSettings)


# --------------------------------------------------------------------------- mapping


def config_value(config: dict, path: str):
    """The value of `path` in `config`, or its schema default when the key is absent."""
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            default = schema_node(path).get("default", dataclasses.MISSING)
            if default is dataclasses.MISSING:
                raise ConfigError(f"config key {path!r} is required (see {SCHEMA_PATH.name})")
            return default
        node = node[part]
    return node


def build(cls: type, config: dict, **derived_values):
    """Instantiate settings class `cls` from `config` (nested settings classes recurse)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if "config" in f.metadata:
            values[f.name] = _coerce(hints[f.name], config_value(config, f.metadata["config"]))
        elif "derived" in f.metadata:
            if f.name not in derived_values:
                raise TypeError(f"{cls.__name__}.{f.name} is derived ({f.metadata['derived']}): pass it")
            values[f.name] = _coerce(hints[f.name], derived_values[f.name])
        elif dataclasses.is_dataclass(hints[f.name]):
            values[f.name] = build(hints[f.name], config, **derived_values)
    return cls(**values)


def settings_for(rule: str, config: dict, **derived_values):
    """The settings of `rule` from the (validated) config; derived fields are passed in."""
    return build(RULE_SETTINGS[rule], config, **derived_values)


def as_params(settings) -> dict:
    """Plain data for Snakemake `params` (tuples become lists, like YAML would)."""
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value

    return plain(dataclasses.asdict(settings))


def from_params(cls: type, params: dict):
    """Rebuild a settings object from `as_params` output, rejecting unknown or missing keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(params) - names
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    values = {}
    for name, value in params.items():
        hint = hints[name]
        values[name] = from_params(hint, value) if dataclasses.is_dataclass(hint) else _coerce(hint, value)
    return cls(**values)


def _coerce(hint, value):
    if typing.get_origin(hint) is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    return value


def settings_classes() -> list[type]:
    """Every settings class, nested ones included (for the schema round-trip test)."""
    seen: list[type] = []

    def visit(cls: type) -> None:
        if cls in seen:
            return
        seen.append(cls)
        for hint in typing.get_type_hints(cls).values():
            if dataclasses.is_dataclass(hint):
                visit(hint)

    for cls in (*RULE_SETTINGS.values(), *PARSE_TIME_SETTINGS):
        visit(cls)
    return seen
