"""The one config -> settings mapping: schema and settings classes agree key for key, and the
parse-time plan resolves layers and rejects configs that do not fit, naming the key."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import yaml

from circuitflow.config import (
    RULE_SETTINGS,
    ConfigError,
    TrainTranscoderSettings,
    as_params,
    from_params,
    schema_leaves,
    schema_node,
    settings_classes,
    settings_for,
)
from circuitflow.io import write_json
from circuitflow.workflow import plan_workflow, prompt_param, require_complete_set, rule_params

from ..conftest import ROOT


def knob_fields() -> dict[str, list]:
    """config key -> the settings fields that read it (a key may feed several rules)."""
    found: dict[str, list] = {}
    for cls in settings_classes():
        for f in dataclasses.fields(cls):
            key = f.metadata.get("config") or f.metadata.get("resolves")
            if key:
                found.setdefault(key, []).append((cls, f))
            else:  # a derived value, or a nested settings class (visited by settings_classes)
                nested = dataclasses.is_dataclass(typing.get_type_hints(cls)[f.name])
                assert "derived" in f.metadata or nested, f"{cls.__name__}.{f.name} names no config key"
    return found


def test_every_schema_key_has_a_field_with_its_default_and_back():
    leaves, fields = schema_leaves(), knob_fields()
    assert set(leaves) == set(fields), (set(leaves) ^ set(fields))
    for key, users in fields.items():
        for cls, f in users:
            if "resolves" in f.metadata:
                continue  # the resolved list; its default ('all') lives in the schema alone
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
            assert default == leaves[key], f"{cls.__name__}.{f.name}: {default!r} vs schema {leaves[key]!r}"


def test_the_default_config_sets_only_schema_keys_and_all_required_ones():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    leaves = schema_leaves()
    flat = set()
    for section, body in config.items():
        flat |= {f"{section}.{key}" for key in body} if isinstance(body, dict) else {section}
    assert set(flat) <= set(leaves)
    assert {k for k, v in leaves.items() if v is dataclasses.MISSING} <= set(flat)


def test_the_default_config_sets_the_recipe_knobs_and_only_values_off_their_defaults():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    leaves = schema_leaves()
    recipe = {key for key in leaves if schema_node(key).get("x-recipe")}
    assert {"run", "model.source", "dataset.source", "transcoder.k", "llm.base_url", "hub.repo_id"} <= recipe
    flat = {f"{section}.{key}": value for section, body in config.items() if isinstance(body, dict)
            for key, value in body.items()}
    flat.update({section: body for section, body in config.items() if not isinstance(body, dict)})
    assert recipe <= set(flat), f"config/config.yaml leaves out recipe knobs {sorted(recipe - set(flat))}"
    at_default = sorted(key for key, value in flat.items() if key not in recipe and value == leaves[key])
    assert not at_default, f"config/config.yaml repeats the schema defaults of {at_default}: drop them"


def test_params_round_trip_for_every_rule():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    derived = {"layers": (0, 3), "source_id": "run-transcoders", "sample_layers": (0, 6),
               "base_model": "org/model", "commit_message": "publish", "scan": "org/repo", "source": "org/model",
               "model_source": "org/model"}
    for rule, cls in RULE_SETTINGS.items():
        names = {f.name for f in dataclasses.fields(cls)}
        settings = settings_for(rule, config, **{k: v for k, v in derived.items() if k in names})
        params = as_params(settings)
        yaml.safe_dump(params)  # plain data, as Snakemake params should be
        assert from_params(cls, params) == settings
    train = settings_for("train_transcoders", config)
    assert isinstance(train, TrainTranscoderSettings)
    assert (train.architecture.k, train.training.steps) == (config["transcoder"]["k"], config["transcoder"]["steps"])
    with pytest.raises(TypeError, match="no field"):
        from_params(cls, {**params, "unknown_knob": 1})


def tiny_plan_config(tmp_path, **sections) -> dict:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    write_json(model / "config.json", {"num_hidden_layers": 3, "hidden_size": 8, "max_position_embeddings": 64})
    prompts = tmp_path / "prompts"
    prompts.mkdir(exist_ok=True)
    (prompts / "one.txt").write_text("A prompt\n")
    config = {"run": "t", "model": {"name": "t-model", "source": str(model)},
              "dataset": {"source": "corpus.jsonl", "context_length": 32},
              "activations": {}, "transcoder": {}, "features": {}, "neurons": {},
              "attribution": {"prompts_dir": str(prompts), "prompts": {"inline": "Some text"}}}
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    return config


def test_plan_resolves_layers_and_prompts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = plan_workflow(tiny_plan_config(tmp_path))
    assert (plan.n_layers, plan.layers, plan.feature_layers, plan.complete) == (3, (0, 1, 2), (0, 1, 2), True)
    assert list(plan.prompts) == ["inline", "one"]
    assert prompt_param(tiny_plan_config(tmp_path), plan, "inline")["text"] == "Some text"
    assert prompt_param(tiny_plan_config(tmp_path), plan, "one")["text"] is None
    config = tiny_plan_config(tmp_path, activations={"layers": [2, 0]}, features={"layers": [2]})
    subset = plan_workflow(config)
    assert (subset.layers, subset.feature_layers, subset.complete) == ((0, 2), (2,), False)
    assert rule_params("collect_neurons", config, subset)["layers"] == [2]
    assert rule_params("collect_features", config, subset)["source_id"] == "t-transcoders"
    with pytest.raises(ConfigError, match=r"leaves out layer\(s\) \[1\] of the model's 3"):
        require_complete_set(subset)


@pytest.mark.parametrize("sections,message", [
    ({"activations": {"layers": [0, 5]}}, r"activations.layers \[5\]: out of range"),
    ({"activations": {"layers": [0]}, "features": {"layers": [1]}}, r"features.layers \[1\]: have no transcoder"),
    # the cross-key rules themselves are tested in test_config_rules; these check the plan applies them
    ({"transcoder": {"k": 32, "n_features": 32}}, "transcoder.k 32 must be below transcoder.n_features 32"),
    ({"transcoder": {"kind": "clt"}}, "transcoder.kind clt needs transcoder.activation: jumprelu"),
    ({"transcoder": {"kind": "clt", "activation": "jumprelu", "skip_connection": False, "clt_memory_gb": 1}},
     r"transcoder.kind clt with transcoder.n_features 2048 over 3 layers .* more than transcoder.clt_memory_gb 1"),
    ({"dataset": {"context_length": 128}}, "dataset.context_length 128 exceeds the model's context of 64"),
    ({"interp": {"categories": {"Math": "m", "math": "m"}}}, "interp.categories names 'Math' and 'math'"),
])
def test_plan_rejects_configs_that_do_not_fit(tmp_path, monkeypatch, sections, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        plan_workflow(tiny_plan_config(tmp_path, **sections))


def test_graphs_of_a_family_circuit_tracer_cannot_attribute_are_refused_at_parse_time(tmp_path, monkeypatch):
    from circuitflow.workflow import require_attributable

    monkeypatch.chdir(tmp_path)
    config = tiny_plan_config(tmp_path)
    write_json(tmp_path / "model/config.json", {"num_hidden_layers": 3, "hidden_size": 8, "max_position_embeddings": 64,
                                                "architectures": ["GPT2LMHeadModel"]})
    plan = plan_workflow(config)  # caching, training and features still plan
    with pytest.raises(ConfigError, match="circuit-tracer 0.5.0 cannot attribute GPT2LMHeadModel models"):
        require_attributable(config, plan)
    write_json(tmp_path / "model/config.json", {"num_hidden_layers": 3, "hidden_size": 8, "architectures": ["Qwen2ForCausalLM"]})
    require_attributable(config, plan_workflow(config))


def test_model_source_is_required_without_an_imported_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tiny_plan_config(tmp_path)
    config["model"]["source"] = None
    with pytest.raises(ConfigError, match="model.source is null: set it to the model to explain"):
        plan_workflow(config)
