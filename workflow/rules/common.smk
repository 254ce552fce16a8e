# Parse-time plan and getters shared by every .smk file; all of them call circuitflow.workflow.
# Output paths come from PATHS (circuitflow.paths), where each is declared once.
from circuitflow.paths import GRAPHS_LINK, INTERP_UNITS, per_layer, per_prompt
from circuitflow.workflow import (
    caption_values,
    cross_layer_weights,
    dataset_files,
    graph_score_files,
    hub_repo_inputs as _hub_repo_inputs,
    imported_set_inputs,
    plan_workflow,
    prompt_files,
    prompt_param,
    require_attributable,
    require_complete_set,
    require_hub,
    rule_params,
    trained_layer_files,
    trained_set_files,
    training_groups,
    training_metrics_files,
    transcoder_files,
)

PLAN = plan_workflow(config)
PATHS = PLAN.paths
RESULTS = PLAN.results  # logs/ and benchmarks/ of each rule sit under it
MODEL_DIR = PLAN.model_dir
TRANSCODER_SET = PATHS.transcoder_set
# Every weights file of the set: layer_<l>.safetensors (plt), or W_enc_<i>/W_dec_<i> (clt).
TRANSCODER_WEIGHTS = transcoder_files(PLAN)["weights"]
TRANSCODER_ARCHITECTURES = transcoder_files(PLAN)["architectures"]
# plt training jobs, "<first>-<last>" -> layers; the layer files write_transcoder_set links into place.
TRAINING_GROUPS = training_groups(config, PLAN)
TRAINED_LAYER_FILES = trained_layer_files(PLAN)
UNITS = list(INTERP_UNITS)  # transcoder features, and the MLP-neuron baseline
ENV = "../envs/circuitflow.yaml"


wildcard_constraints:
    layer=r"\d+",
    group=r"\d+-\d+",
    slug=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    unit="|".join(UNITS),


def settings(rule_name):
    return rule_params(rule_name, config, PLAN)


def complete_transcoder_set(wildcards):
    """The set config, for rules that need every layer (fails with the missing layers otherwise)
    and a model family circuit-tracer attributes (fails naming the family otherwise)."""
    require_complete_set(PLAN)
    require_attributable(config, PLAN)
    return TRANSCODER_SET


def graphs_for_interp(wildcards):
    """Transcoder features add the graphs' feature nodes to the judge's selection (when the
    set is complete, so graphs can exist); neurons have no graph nodes."""
    return per_prompt(PATHS.graph, PLAN.prompts) if wildcards.unit == "features" and PLAN.complete else []


def transcoders_for_interp(wildcards):
    """Scoring runs the transcoders to find negatives for features; neurons need only the model."""
    if wildcards.unit != "features":
        return []
    return [TRANSCODER_SET, *TRANSCODER_WEIGHTS]


def judge_cache(stage):
    """The response cache of the LLM job of `stage` for its unit (a params function)."""
    return lambda wildcards: PATHS.judge_cache_of(stage, wildcards.unit)


def hub_repo_inputs(wildcards):
    """What the published repo holds (fails naming hub.repo_id or hub.base_model when unset)."""
    return _hub_repo_inputs(config, PLAN)


def hub_token_check(wildcards):
    """No input: refuses to build the DAG, before any job, when the hub keys are unset or no
    Hugging Face token is available (in that order)."""
    from circuitflow.hub import require_token

    require_hub(config, PLAN)
    require_token()
    return []
