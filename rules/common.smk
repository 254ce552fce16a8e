# Parse-time facts and getters shared by the rule files (functions only, no rules).
from circuitflow.workflow import (
    collect_settings,
    model_folder,
    prompt_origins,
    resolve_feature_layers,
    resolve_layers,
)

RUN = config["run"]
RESULTS = f"results/{RUN}"
MODEL_DIR = model_folder(config)
LAYERS = resolve_layers(config)
FEATURE_LAYERS = resolve_feature_layers(config, LAYERS)
PROMPTS = prompt_origins(config)
ENV = "../envs/circuitflow.yaml"


wildcard_constraints:
    layer=r"\d+",
    slug=r"[A-Za-z0-9][A-Za-z0-9_-]*",


def dataset_input():
    """A local corpus file is an input, so editing it reruns the dataset (hub ids are not files)."""
    source = config["dataset"]["source"]
    return [] if source.startswith("hf:") else [source]


def shard_paths():
    return {layer: f"{RESULTS}/activations/layer_{layer}.parquet" for layer in LAYERS}


def transcoder_weights():
    return expand(f"{RESULTS}/transcoders/layer_{{layer}}.safetensors", layer=LAYERS)


def prompt_input(wildcards):
    """The prompt file, so editing it reruns its graph (config prompts have no file)."""
    origin = PROMPTS[wildcards.slug]
    return [] if origin.startswith("config:") else [origin]


def prompt_params(wildcards):
    origin = PROMPTS[wildcards.slug]
    inline = config["attribution"].get("prompts", {})
    return {"origin": origin, "inline": {wildcards.slug: inline[wildcards.slug]} if wildcards.slug in inline else {}}


def attribution_settings():
    skip = {"prompts_dir", "prompts"}
    return {key: value for key, value in config["attribution"].items() if key not in skip}


def per_prompt(suffix):
    """One path per prompt, in the order of PROMPTS (sorted by name)."""
    return [f"{RESULTS}/attribution/{slug}{suffix}" for slug in PROMPTS]
