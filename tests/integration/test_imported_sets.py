"""transcoder.source: published circuit-tracer sets (written by circuit-tracer's own classes) are
checked at parse time, imported, and loaded by circuit-tracer's loaders for collection and
attribution; every bad set is refused with one line naming both values."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from circuitflow.config import ConfigError, ImportTranscoderSetSettings
from circuitflow.features.ids import feature_files
from circuitflow.transcoders import read_transcoder_set
from circuitflow.transcoders.imported import (
    PublishedSetError,
    estimate_memory_mb,
    import_transcoder_set,
    read_published_set,
)
from circuitflow.transcoders.replacement import load_replacement
from circuitflow.workflow import plan_workflow

D_MODEL, FEATURES = 64, 48


def write_plt(folder: Path, n_layers: int = 2, d_model: int = D_MODEL, model_name: str = "org/tiny-lm",
              skip: bool = True, extra: dict | None = None) -> Path:
    """A per-layer JumpReLU set saved by circuit-tracer's own TranscoderSet.to_safetensors."""
    from circuit_tracer.transcoder import SingleLayerTranscoder, TranscoderSet
    from circuit_tracer.transcoder.activation_functions import JumpReLU

    torch.manual_seed(0)
    transcoders = {}
    for layer in range(n_layers):
        tc = SingleLayerTranscoder(d_model, FEATURES, JumpReLU(torch.rand(FEATURES) * 0.1, 0.1), layer,
                                   skip_connection=skip, device=torch.device("cpu"), dtype=torch.float32)
        with torch.no_grad():
            for name in ("W_enc", "W_dec", "b_enc", "b_dec") + (("W_skip",) if skip else ()):
                getattr(tc, name).normal_(0, 0.2)
        transcoders[layer] = tc
    folder.mkdir(parents=True)
    TranscoderSet(transcoders, feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out").to_safetensors(
        str(folder))
    config = {"model_kind": "transcoder_set", "model_name": model_name, "feature_input_hook": "mlp.hook_in",
              "feature_output_hook": "mlp.hook_out", "scan": "org/tiny-set", **(extra or {})}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def write_clt(folder: Path, n_layers: int = 2) -> Path:
    """A JumpReLU cross-layer transcoder saved by circuit-tracer's CrossLayerTranscoder.to_safetensors."""
    from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder

    torch.manual_seed(1)
    clt = CrossLayerTranscoder(n_layers, FEATURES, D_MODEL, activation_function="jump_relu", lazy_decoder=False,
                               feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out",
                               dtype=torch.float32, device=torch.device("cpu"))
    with torch.no_grad():
        for parameter in clt.parameters():
            parameter.normal_(0, 0.2)
        clt.activation_function.threshold.uniform_(0, 0.1)
    folder.mkdir(parents=True)
    clt.to_safetensors(str(folder))
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "model_kind": "cross_layer_transcoder", "model_name": "org/tiny-lm", "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "mlp.hook_out"}))
    return folder


def plan_config(tmp: Path, model_source, set_source, **sections) -> dict:
    config = {"run": "imp", "model": {"name": "tiny-lm", "source": None if model_source is None else str(model_source)},
              "dataset": {"source": "corpus.jsonl", "context_length": 32}, "activations": {},
              "transcoder": {"source": str(set_source)}, "features": {}, "neurons": {},
              "attribution": {"prompts_dir": None, "prompts": {"p": "Some text"}}}
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    return config


def settings(folder: Path, model_dir: Path, **overrides) -> ImportTranscoderSetSettings:
    return ImportTranscoderSetSettings(**{"model_source": str(model_dir), "source": str(folder),
                                          "scan": "./data/features", **overrides})


def test_plt_is_planned_imported_and_loaded_by_circuit_tracer(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.chdir(tmp_path)
    folder = write_plt(tmp_path / "set")
    plan = plan_workflow(plan_config(tmp_path, tiny_model_dir, folder))
    assert plan.imported and (plan.kind, plan.layers, plan.complete) == ("plt", (0, 1), True)

    config = import_transcoder_set(model_dir=tiny_model_dir, out_config=tmp_path / "run/config.yaml",
                                   settings=settings(folder, tiny_model_dir))
    assert (config["activation"], config["d_model"], config["n_features"], config["skip_connection"]) == \
        ("jumprelu", D_MODEL, FEATURES, True)
    assert config["source"]["folder"] == str(folder.resolve()) and config["source"]["model_name"] == "org/tiny-lm"
    parsed = read_transcoder_set(tmp_path / "run/config.yaml")
    assert parsed.imported and parsed.layers[1] == (folder / "layer_1.safetensors").resolve()

    # the replacement interface over circuit-tracer's own loaded set equals its modules
    from circuit_tracer.utils.hf_utils import load_transcoders

    theirs = load_transcoders({"model_kind": "transcoder_set", "scan": "s", "feature_input_hook": "mlp.hook_in",
                               "feature_output_hook": "mlp.hook_out",
                               "transcoders": [str(folder / f"layer_{i}.safetensors") for i in (0, 1)]},
                              device=torch.device("cpu"), lazy_decoder=False)
    ours = load_replacement(parsed)
    x = torch.randn(5, D_MODEL)
    for layer in (0, 1):
        acts = ours.encode(layer, x)
        assert torch.equal(acts, theirs[layer].encode(x)) and (acts > 0).any()
        assert torch.allclose(ours.decode(layer, {layer: acts}, x), theirs[layer].decode(acts, x), atol=1e-6)
        assert torch.equal(ours.output_directions(layer), theirs[layer].W_dec)


def test_topk_set_gets_relu_topk(tmp_path, tiny_model_dir):
    folder = write_plt(tmp_path / "set", skip=False, extra={"activation": "topk", "k": 4})
    import_transcoder_set(model_dir=tiny_model_dir, out_config=tmp_path / "run/config.yaml",
                          settings=settings(folder, tiny_model_dir))
    parsed = read_transcoder_set(tmp_path / "run/config.yaml")
    assert (parsed.architecture.activation, parsed.architecture.k) == ("topk", 4)
    acts = load_replacement(parsed).encode(0, torch.randn(7, D_MODEL))
    assert ((acts > 0).sum(-1) <= 4).all() and (acts >= 0).all()


def test_clt_imported_and_decoded_like_circuit_tracer(tmp_path, tiny_model_dir):
    folder = write_clt(tmp_path / "clt")
    config = import_transcoder_set(model_dir=tiny_model_dir, out_config=tmp_path / "run/config.yaml",
                                   settings=settings(folder, tiny_model_dir))
    assert config["model_kind"] == "cross_layer_transcoder" and config["n_layers"] == 2
    parsed = read_transcoder_set(tmp_path / "run/config.yaml")
    ours = load_replacement(parsed)
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt

    theirs = load_clt(str(folder), feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out",
                      device=torch.device("cpu"), dtype=torch.float32, lazy_decoder=False)
    x = torch.randn(2, 6, D_MODEL)  # [layer, tokens, d_model]
    acts = {layer: ours.encode(layer, x[layer]) for layer in (0, 1)}
    expected = theirs.decode(torch.stack([acts[0], acts[1]]).to_sparse())
    for layer in (0, 1):
        assert torch.allclose(ours.decode(layer, acts, x[layer]), expected[layer], atol=1e-5)
    assert torch.equal(ours.output_directions(0), theirs.W_dec[0][:, -1])


def test_model_source_defaults_to_the_sets_model_name(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.chdir(tmp_path)
    folder = write_plt(tmp_path / "set", model_name=str(tiny_model_dir))
    plan = plan_workflow(plan_config(tmp_path, None, folder))
    assert plan.model_source == str(tiny_model_dir)


@pytest.mark.parametrize("make,message", [
    (lambda f: write_plt(f, d_model=32), r"has d_model 32 but model.source .* has d_model 64"),
    (lambda f: write_plt(f, n_layers=3), r"has 3 layers but model.source .* has 2"),
    (lambda f: (write_plt(f, n_layers=3), (f / "layer_1.safetensors").unlink()),
     r"layer file\(s\) layer_1.safetensors missing"),
    (lambda f: (write_plt(f), (f / "config.yaml").write_text(yaml.safe_dump({
        "model_kind": "sparse_autoencoder", "feature_input_hook": "a", "feature_output_hook": "b"}))),
     r"model_kind 'sparse_autoencoder' .* is not one circuit-tracer loads"),
    (lambda f: write_plt(f, extra={"feature_input_hook": "hook_resid_pre"}), r"hooks hook_resid_pre -> mlp.hook_out"),
    (lambda f: write_plt(f, extra={"feature_input_hook": "ln2.hook_normalized"}),
     r"reads ln2.hook_normalized, which circuit-tracer 0.5.0 maps for Gemma2ForCausalLM, Gemma3ForCausalLM only, "
     r"not for the model's LlamaForCausalLM"),
    (lambda f: (write_plt(f, extra={"transcoders": ["layer_0.safetensors", "gone/layer_1.safetensors"]})),
     r"the file for layer 1, .*gone/layer_1.safetensors, does not exist"),
])
def test_bad_sets_are_refused_at_parse_time(tmp_path, monkeypatch, tiny_model_dir, make, message):
    monkeypatch.chdir(tmp_path)
    make(tmp_path / "set")
    with pytest.raises(ConfigError, match=message):
        plan_workflow(plan_config(tmp_path, tiny_model_dir, tmp_path / "set"))


def test_model_name_mismatch_is_an_error_unless_allowed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = write_plt(tmp_path / "set", model_name="org/tiny-lm")
    # a hub model.source that cannot be read offline: its layer count comes from model.n_layers
    config = plan_config(tmp_path, "org/other-lm", folder, model={"n_layers": 2})
    with pytest.raises(ConfigError, match=r"made for model_name 'org/tiny-lm', but model.source is 'org/other-lm'"):
        plan_workflow(config)
    assert plan_workflow({**config, "transcoder": {**config["transcoder"], "allow_model_mismatch": True}}).imported
    assert plan_workflow(plan_config(tmp_path, "ORG/Tiny-LM", folder, model={"n_layers": 2})).imported


def test_memory_estimate_refuses_before_loading(tmp_path, monkeypatch, tiny_model_dir):
    folder = write_plt(tmp_path / "set")
    import_transcoder_set(model_dir=tiny_model_dir, out_config=tmp_path / "run/config.yaml",
                          settings=settings(folder, tiny_model_dir, lazy_decoder=False))
    parsed = read_transcoder_set(tmp_path / "run/config.yaml")
    sizes = read_published_set(folder, "set").tensor_bytes
    eager = estimate_memory_mb(sizes, lazy_encoder=False, lazy_decoder=False)
    lazy = estimate_memory_mb(sizes, lazy_encoder=True, lazy_decoder=True)
    assert eager["encoders"] == eager["decoders"] == 2 * FEATURES * D_MODEL * 4 / 2**20 and lazy["encoders"] == 0
    assert lazy["total"] < eager["total"]
    monkeypatch.setenv("CIRCUITFLOW_JOB_MEM_MB", "0.01")
    monkeypatch.setenv("CIRCUITFLOW_JOB_RULE", "collect_features")
    with pytest.raises(PublishedSetError, match=r"more than resources.mem_mb 0 of rule collect_features; set "
                                                r"transcoder.lazy_decoder: true and transcoder.lazy_encoder: true"):
        load_replacement(parsed)
    monkeypatch.setenv("CIRCUITFLOW_JOB_MEM_MB", "100")
    assert load_replacement(parsed).n_features == FEATURES


def test_moved_set_files_are_named(tmp_path, tiny_model_dir):
    folder = write_plt(tmp_path / "set")
    import_transcoder_set(model_dir=tiny_model_dir, out_config=tmp_path / "run/config.yaml",
                          settings=settings(folder, tiny_model_dir))
    shutil.rmtree(folder)
    from circuitflow.transcoders import TranscoderSetError

    with pytest.raises(TranscoderSetError, match=r"imports .*layer_0.safetensors for layer 0, but that file no longer"):
        read_transcoder_set(tmp_path / "run/config.yaml")


@pytest.mark.parametrize("extra", [{}, {"activation": "topk", "k": 4}])
def test_imported_set_attributes_a_prompt(tmp_path, tiny_model_dir, extra):
    from circuitflow.attribution import attribute_prompt
    from circuitflow.config import AttributePromptSettings

    folder = write_plt(tmp_path / "set", extra=extra)
    import_transcoder_set(model_dir=tiny_model_dir, out_config=tmp_path / "run/config.yaml",
                          settings=settings(folder, tiny_model_dir))
    out = tmp_path / "graph"
    prompt = {"slug": "p", "origin": "config:attribution.prompts.p", "text": "The capital of France is"}
    scores = attribute_prompt(prompt=prompt, model_dir=tiny_model_dir, transcoder_set=tmp_path / "run/config.yaml",
                              out_graph=out / "p.json", out_metadata=out / "p.metadata.json",
                              out_scores=out / "p.scores.json",
                              settings=AttributePromptSettings(max_feature_nodes=32, batch_size=16, device="cpu"))
    assert scores["active_features"] > 0 and 0 <= scores["replacement_score"] <= 1


@pytest.mark.parametrize("hooks", [("mlp.hook_in", "mlp.hook_out"), ("hook_resid_mid", "hook_mlp_out")])
@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_fidelity_and_features_of_an_imported_set(tmp_path, tiny_model_dir, tiny_corpus, hooks, kind):
    """evaluation.imported_set and feature collection run on imported sets, at the set's own hooks."""
    from circuitflow.config import CollectFeaturesSettings, EvaluateTranscodersSettings
    from circuitflow.config import PrepareDatasetSettings
    from circuitflow.data import prepare_dataset
    from circuitflow.features import collect_features
    from circuitflow.transcoders import evaluate_transcoders

    folder = write_plt(tmp_path / "set") if kind == "plt" else write_clt(tmp_path / "set")
    raw = yaml.safe_load((folder / "config.yaml").read_text())
    raw.update(feature_input_hook=hooks[0], feature_output_hook=hooks[1])
    (folder / "config.yaml").write_text(yaml.safe_dump(raw))
    import_transcoder_set(model_dir=tiny_model_dir, out_config=tmp_path / "run/config.yaml",
                          settings=settings(folder, tiny_model_dir))
    prepare_dataset(model_dir=tiny_model_dir, out_train=tmp_path / "train.parquet",
                    out_validation=tmp_path / "validation.parquet", out_summary=tmp_path / "s.json",
                    settings=PrepareDatasetSettings(source=str(tiny_corpus), context_length=32, train_tokens=200,
                                                    validation_tokens=300))
    result = evaluate_transcoders(model_dir=tiny_model_dir, transcoder_set=tmp_path / "run/config.yaml",
                                  validation_split=tmp_path / "validation.parquet", out_json=tmp_path / "f.json",
                                  out_csv=tmp_path / "f.csv",
                                  settings=EvaluateTranscodersSettings(layers=(0, 1), windows=4, splice_windows=2,
                                                                       batch_size=2, device="cpu"))
    assert result["all_layers"]["splice_tokens"] > 0 and all(row["fvu"] >= 0 for row in result["layers"])
    metadata = collect_features(model_dir=tiny_model_dir, transcoder_set=tmp_path / "run/config.yaml",
                                validation_split=tmp_path / "validation.parquet", out_dir=tmp_path / "features",
                                out_metadata=tmp_path / "features.json",
                                settings=CollectFeaturesSettings(layers=(0, 1), source_id="imported", batch_size=4,
                                                                 top_k=3, n_quantiles=2, examples_per_quantile=1,
                                                                 n_random=1, histogram_bins=5, device="cpu"))
    assert feature_files(tmp_path / "features") and metadata


def test_gemmascope_style_set_fetches_files_of_another_repo(tmp_path, monkeypatch, tiny_model_dir):
    """A set whose config.yaml lists .npz files of another repo (as mntss/gemma-scope-transcoders
    points at Google's): download_transcoder_set fetches them from the stand-in hub beside the
    snapshot, the headers give the sizes, and circuit-tracer's GemmaScope reader loads them."""
    import json
    import os
    import subprocess
    import sys
    import textwrap

    import numpy as np

    from ..hub_server import WRITE_TOKEN, StandInHub

    rng = np.random.default_rng(0)
    weights = tmp_path / "weights"
    for layer in (0, 1):
        (weights / f"layer_{layer}/width_tiny").mkdir(parents=True)
        np.savez(weights / f"layer_{layer}/width_tiny/params.npz", W_enc=rng.normal(size=(D_MODEL, FEATURES)),
                 W_dec=rng.normal(size=(FEATURES, D_MODEL)), b_enc=rng.normal(size=FEATURES) * 0.1,
                 b_dec=rng.normal(size=D_MODEL), threshold=rng.uniform(0, 0.5, size=FEATURES))
    set_folder = tmp_path / "set-files"
    set_folder.mkdir()
    (set_folder / "config.yaml").write_text(yaml.safe_dump({
        "model_kind": "transcoder_set", "model_name": "org/tiny-lm", "feature_input_hook": "ln2.hook_normalized",
        "feature_output_hook": "hook_mlp_out",
        "transcoders": [f"hf://circuitflow-test/scope-weights/layer_{i}/width_tiny/params.npz" for i in (0, 1)]}))
    script = textwrap.dedent(f"""
        import json
        from huggingface_hub import HfApi
        from circuitflow.transcoders.imported import download_transcoder_set
        api = HfApi()
        for repo, folder in (("circuitflow-test/scope-weights", {str(weights)!r}),
                             ("circuitflow-test/gemma-scope-tiny", {str(set_folder)!r})):
            api.create_repo(repo)
            api.upload_folder(repo_id=repo, folder_path=folder)
        print(json.dumps(download_transcoder_set(source_uri="hf://circuitflow-test/gemma-scope-tiny",
                                                 out_receipt="receipt.json")))
    """)
    with StandInHub(tmp_path / "hub") as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf-home"),
               "HF_HUB_OFFLINE": "0", "HF_TOKEN": WRITE_TOKEN}
        done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    receipt = json.loads(done.stdout.strip().splitlines()[-1])
    assert "external/circuitflow-test/scope-weights/layer_1/width_tiny/params.npz" in receipt["files"]
    folder = tmp_path / receipt["folder"]
    published = read_published_set(folder, "hf://circuitflow-test/gemma-scope-tiny", "circuitflow-test/gemma-scope-tiny")
    assert (published.n_layers, published.d_model, published.n_features, published.activation) == \
        (2, D_MODEL, FEATURES, "jumprelu")
    assert published.tensor_bytes["eager_only"] == 1  # circuit-tracer reads .npz files whole
    run = tmp_path / "run/config.yaml"
    monkeypatch.chdir(tmp_path)  # where the workflow runs: resources/ is relative to it
    import_transcoder_set(model_dir=tiny_model_dir, out_config=run, settings=ImportTranscoderSetSettings(
        model_source=str(tiny_model_dir), source="hf://circuitflow-test/gemma-scope-tiny", scan="./data/features"),
        receipt=tmp_path / "receipt.json")
    x = torch.randn(5, D_MODEL)
    params = np.load(folder / "external/circuitflow-test/scope-weights/layer_1/width_tiny/params.npz")
    pre = x @ torch.tensor(params["W_enc"], dtype=torch.float32) + torch.tensor(params["b_enc"], dtype=torch.float32)
    expected = pre * (pre > torch.tensor(params["threshold"], dtype=torch.float32))
    assert torch.allclose(load_replacement(read_transcoder_set(run)).encode(1, x), expected, atol=1e-5)
