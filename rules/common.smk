# Parse-time plan and getters shared by every .smk file; all of them call circuitflow.workflow.
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
    training_metrics_files,
    transcoder_files,
)

PLAN = plan_workflow(config)
RESULTS = PLAN.results
MODEL_DIR = PLAN.model_dir
TRANSCODER_SET = f"{RESULTS}/transcoders/config.yaml"
# Every weights file of the set: layer_<l>.safetensors (plt), or W_enc_<i>/W_dec_<i> (clt).
TRANSCODER_WEIGHTS = transcoder_files(PLAN)["weights"]
TRANSCODER_ARCHITECTURES = transcoder_files(PLAN)["architectures"]
INTERP = f"{RESULTS}/interp"
INTERP_CACHE = f"{INTERP}/llm-cache.sqlite"
INTERP_KINDS = ["features", "neurons"]  # transcoder features, and the MLP-neuron baseline
ENV = "../envs/circuitflow.yaml"


wildcard_constraints:
    layer=r"\d+",
    slug=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    kind="|".join(INTERP_KINDS),


def settings(rule_name):
    return rule_params(rule_name, config, PLAN)


def per_layer(pattern):
    """One path per transcoder layer, e.g. per_layer("transcoders/layer_{layer}.safetensors")."""
    return expand(f"{RESULTS}/{pattern}", layer=PLAN.layers)


def per_prompt(suffix):
    """One path per prompt, in the order of PLAN.prompts (sorted by name)."""
    return [f"{RESULTS}/attribution/{slug}{suffix}" for slug in PLAN.prompts]


def complete_transcoder_set(wildcards):
    """The set config, for rules that need every layer (fails with the missing layers otherwise)
    and a model family circuit-tracer attributes (fails naming the family otherwise)."""
    require_complete_set(PLAN)
    require_attributable(config, PLAN)
    return TRANSCODER_SET


def graphs_for_interp(wildcards):
    """Transcoder features add the graphs' feature nodes to the judge's selection (when the
    set is complete, so graphs can exist); neurons have no graph nodes."""
    return per_prompt(".json") if wildcards.kind == "features" and PLAN.complete else []


def transcoders_for_interp(wildcards):
    """Scoring runs the transcoders to find negatives for features; neurons need only the model."""
    if wildcards.kind != "features":
        return []
    return [TRANSCODER_SET, *TRANSCODER_WEIGHTS]


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
