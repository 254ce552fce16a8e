"""Model families beyond Llama: Qwen2, Qwen3, Gemma-2 and Gemma-3 (text) through every stage.

Each family gets a tiny random model (2 layers, d_model 64, SmolLM2's tokenizer) materialized by
prepare_model, then caching, transcoder training, feature collection, fidelity and one
attribution graph, all through the library's own entry points. Two checks pin down what
attribution sees:

- the activations circuitflow caches (``mlp.hook_in`` / ``mlp.hook_out``, read by
  `circuitflow.model.hooks.mlp_recorder`) are the tensors circuit-tracer's nnsight
  ReplacementModel reads at the transcoders' hooks, on the same tokens;
- with attention and MLP outputs zeroed, the residual at the last position is the token's
  embedding alone, so that token's edge to each target logit must equal the demeaned logit
  (this caught Gemma-3's unscaled token vectors, see `circuitflow.attribution.patches`).
"""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch
import yaml

from circuitflow.activations import ActivationShard
from circuitflow.attribution.attribute import attribute_prompt, load_replacement_model
from circuitflow.config import (
    AttributePromptSettings,
    CollectFeaturesSettings,
    EvaluateTranscodersSettings,
    PrepareModelSettings,
    TrainingSettings,
    TrainTranscoderSettings,
    TranscoderArchitecture,
    WriteTranscoderSetSettings,
)
from circuitflow.data.dataset import read_windows
from circuitflow.features import collect_features
from circuitflow.features.ids import feature_files
from circuitflow.model import load_model, prepare_model, read_model_facts
from circuitflow.model.hooks import decoder_layers, mlp_recorder
from circuitflow.transcoders import evaluate_transcoders, train_transcoder, write_transcoder_set

from ..conftest import build_tiny_model, tiny_shards

FAMILIES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "gemma2": "Gemma2ForCausalLM",
            "gemma3": "Gemma3ForCausalLM"}
# no skip connection: the zeroed-model check needs every path from a token to a logit to be the residual
ARCH = TranscoderArchitecture(activation="topk", n_features=96, k=6, skip_connection=False)
TRAINING = TrainingSettings(steps=30, batch_size=256, warmup_steps=3, eval_tokens=256, device="cpu")
LAYERS = (0, 1)
PROMPT = "The capital of France is Paris"


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory, smollm2_tokenizer, tiny_corpus):
    """One family's materialized model, dataset, activation shards and trained transcoder set."""
    name = request.param
    started = time.perf_counter()
    tmp = tmp_path_factory.mktemp(name)
    source = build_tiny_model(tmp / "source", smollm2_tokenizer, name)
    model_dir = tmp / "model"
    prepare_model(out_dir=model_dir, settings=PrepareModelSettings(source=str(source)))
    shards = tiny_shards(tmp, model_dir, tiny_corpus)
    folder = tmp / "tc"
    metrics = [train_transcoder(shard_path=shard, layer=layer, out_weights=folder / f"layer_{layer}.safetensors",
                                out_architecture=folder / f"layer_{layer}.architecture.json",
                                out_metrics=folder / f"layer_{layer}.metrics.json",
                                settings=TrainTranscoderSettings(architecture=ARCH, training=TRAINING))
               for layer, shard in zip(LAYERS, shards)]
    write_transcoder_set(model_dir=model_dir, weights=[folder / f"layer_{layer}.safetensors" for layer in LAYERS],
                         out_config=folder / "config.yaml",
                         settings=WriteTranscoderSetSettings(layers=LAYERS, scan="./data/features"))
    yield {"name": name, "tmp": tmp, "model_dir": model_dir, "shards": shards, "set": folder / "config.yaml",
           "metrics": metrics}
    print(f"\n{name}: {time.perf_counter() - started:.1f}s for every test of the family")


def circuit_tracer_hooks(replacement, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """What circuit-tracer's nnsight ReplacementModel reads at the transcoders' input and output
    hooks of every layer (its own resolved locations, visited in execution order)."""
    from nnsight import save

    saved: list = []
    with torch.no_grad(), replacement.trace(ids):
        for layer in LAYERS:
            saved.append(save(replacement.get_feature_input_loc(layer).output))
            saved.append(save(replacement.get_feature_output_loc(layer).output))
    return [(saved[2 * i], saved[2 * i + 1]) for i in range(len(LAYERS))]


def test_materialized_config_fits_circuit_tracer(family):
    config = json.loads((family["model_dir"] / "config.json").read_text())
    assert config["architectures"] == [FAMILIES[family["name"]]]
    assert config["head_dim"] == 16  # Qwen2's is added by prepare_model (circuit-tracer reads it)
    assert all(0 <= m["fvu"] < 1 for m in family["metrics"])  # training learned something on every layer


def test_cached_activations_are_circuit_tracers_hooks(family):
    """Cached shard rows and mlp_recorder's float32 tensors equal circuit-tracer's hook tensors."""
    model_dir = family["model_dir"]
    windows = read_windows(family["tmp"] / "train.parquet").column("tokens").to_pylist()
    ids = torch.tensor(windows[:2])
    replacement = load_replacement_model(model_dir, family["set"], "nnsight", "cpu")
    theirs = circuit_tracer_hooks(replacement, ids)
    model, _ = load_model(model_dir)
    recorder = mlp_recorder(model, LAYERS, stop=False)
    with torch.no_grad():
        model(input_ids=ids)
    recorder.close()
    differences = []
    for layer in LAYERS:
        x, y = recorder.captured[layer]
        their_x, their_y = (t[:, 1:] for t in theirs[layer])  # the cache drops position 0
        assert their_x.shape == x.shape and their_y.shape == y.shape
        scale = max(float(x.abs().max()), float(y.abs().max()))
        difference = max(float((their_x - x).abs().max()), float((their_y - y).abs().max()))
        assert difference <= 1e-5 * scale, (layer, difference, scale)
        # a different tensor (e.g. Gemma's post-MLP norm output) would be far off
        assert float((their_y - y).abs().max()) < 1e-3 * float(y.abs().max())
        differences.append(difference)
        # the shard rows of the first window are the same vectors, stored in activations.dtype
        rows = ActivationShard(family["shards"][layer]).read_row_group(0, columns=("mlp_in", "mlp_out", "pos"))
        n = x.shape[1]
        assert rows["pos"][:n].tolist() == list(range(1, n + 1))
        for column, tensor in (("mlp_in", their_x[0]), ("mlp_out", their_y[0])):
            stored = rows[column][:n].astype(np.float32)
            assert np.allclose(stored, tensor.numpy(), atol=2e-3 * float(tensor.abs().max()), rtol=1e-2), column
    print(f"\n{family['name']}: max |circuit-tracer hook - mlp_recorder| = {max(differences):.2e}")


def test_features_and_fidelity(family):
    tmp, model_dir = family["tmp"], family["model_dir"]
    settings = CollectFeaturesSettings(layers=LAYERS, source_id=f"{family['name']}-transcoders", batch_size=4,
                                       top_k=4, context_before=4, context_after=2, n_quantiles=2,
                                       examples_per_quantile=2, n_random=2, histogram_bins=8, seed=0, device="cpu")
    metadata = collect_features(model_dir=model_dir, transcoder_set=family["set"],
                                validation_split=tmp / "validation.parquet", out_dir=tmp / "features",
                                out_metadata=tmp / "feature_metadata.json", settings=settings)
    assert metadata["features"] and len(feature_files(tmp / "features")) == len(metadata["features"])
    some = json.loads(feature_files(tmp / "features")[0].read_text())
    assert some["examples_quantiles"] and some["top_logits"]

    result = evaluate_transcoders(model_dir=model_dir, transcoder_set=family["set"],
                                  validation_split=tmp / "validation.parquet", out_json=tmp / "fidelity.json",
                                  out_csv=tmp / "fidelity.csv", settings=EvaluateTranscodersSettings(
                                      layers=LAYERS, windows=6, splice_windows=3, batch_size=3, device="cpu"))
    assert result["complete"] is True
    for row in [*result["layers"], result["all_layers"]]:
        assert np.isfinite([row["fvu"], row["ce_spliced"], row["kl_spliced"], row["ce_ablated"]]).all()
        assert row["ce_clean"] == pytest.approx(result["layers"][0]["ce_clean"])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_attribution_graph(family, dtype, tmp_path):
    settings = AttributePromptSettings(max_n_logits=3, desired_logit_prob=0.9, batch_size=64,
                                       max_feature_nodes=64, node_threshold=0.999, edge_threshold=0.9999,
                                       device="cpu", dtype=dtype)
    scores = attribute_prompt(prompt={"slug": "france", "origin": "config:attribution.prompts.france", "text": PROMPT},
                              model_dir=family["model_dir"], transcoder_set=family["set"],
                              out_graph=tmp_path / "graph.json", out_metadata=tmp_path / "meta.json",
                              out_scores=tmp_path / "scores.json", settings=settings)
    graph = json.loads((tmp_path / "graph.json").read_text())
    kinds = {node["feature_type"] for node in graph["nodes"]}
    assert {"cross layer transcoder", "mlp reconstruction error", "embedding", "logit"} <= kinds
    assert 0 < scores["replacement_score"] <= scores["completeness_score"] <= 1.0 + 1e-6
    assert scores["expected_target"]["token"].strip() == "Paris"
    # the error influence, layer by layer, is what the replacement score leaves out
    shares = scores["error_influence_by_layer"]
    assert len(shares) == len(LAYERS) and min(shares) >= 0
    assert sum(shares) == pytest.approx(1 - scores["replacement_score"], abs=1e-4)
    if dtype == "bfloat16":  # the knob reaches the model and the transcoders
        replacement = load_replacement_model(family["model_dir"], family["set"], "nnsight", "cpu", dtype)
        assert replacement.dtype == torch.bfloat16
        assert {p.dtype for p in replacement.transcoders.parameters()} == {torch.bfloat16}


def test_token_edges_are_exact_when_only_embeddings_remain(family, tmp_path):
    """Zero every attention and MLP output: the residual at the last position is that token's
    (scaled) embedding, so its token node's edge to each target logit is the demeaned logit."""
    from circuit_tracer import attribute

    zeroed = tmp_path / "zeroed"
    shutil.copytree(family["model_dir"], zeroed)
    model, tokenizer = load_model(zeroed)
    with torch.no_grad():
        for block in model.model.layers:
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
    model.save_pretrained(zeroed)
    ids = torch.tensor([tokenizer.bos_token_id] + tokenizer(PROMPT, add_special_tokens=False)["input_ids"])
    replacement = load_replacement_model(zeroed, family["set"], "nnsight", "cpu")
    graph = attribute(ids, replacement, max_n_logits=3, desired_logit_prob=0.9, batch_size=64,
                      max_feature_nodes=None)
    n_pos, n_layers = len(ids), read_model_facts(zeroed).n_layers
    last_token = len(graph.selected_features) + n_layers * n_pos + n_pos - 1
    with torch.no_grad():
        hidden = model.model(ids[None]).last_hidden_state[0, -1]
        unembed = model.lm_head.weight
        expected = [float((unembed[t.vocab_idx] - unembed.mean(0)) @ hidden) for t in graph.logit_targets]
    edges = graph.adjacency_matrix[-len(graph.logit_targets):, last_token].tolist()
    assert edges == pytest.approx(expected, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("hooks", [("hook_resid_mid", "hook_mlp_out"), ("ln2.hook_normalized", "hook_mlp_out")])
def test_published_sets_hooks_are_circuit_tracers(family, hooks, tmp_path):
    """Sets imported with transcoder.source may read the residual before the MLP's norm
    (hook_resid_mid) or write after Gemma's post-MLP norm (hook_mlp_out): mlp_recorder (caching,
    fidelity) and hook_point (feature collection, negatives) read what circuit-tracer reads."""
    from circuitflow.model.hooks import hook_point

    if hooks[0] == "ln2.hook_normalized" and not family["name"].startswith("gemma"):
        pytest.skip("circuit-tracer 0.5.0 maps ln2.hook_normalized (GemmaScope's input) for Gemma only")

    config = yaml.safe_load(family["set"].read_text())
    config.update(feature_input_hook=hooks[0], feature_output_hook=hooks[1],
                  layers={layer: str(family["set"].parent / path) for layer, path in config["layers"].items()})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    ids = torch.tensor(read_windows(family["tmp"] / "train.parquet").column("tokens").to_pylist()[:2])
    theirs = circuit_tracer_hooks(load_replacement_model(family["model_dir"], tmp_path / "config.yaml", "nnsight",
                                                         "cpu"), ids)
    model, _ = load_model(family["model_dir"])
    recorder = mlp_recorder(model, LAYERS, stop=False, input_hook=hooks[0], output_hook=hooks[1])
    blocks = decoder_layers(model)
    read = {}
    points = {layer: hook_point(blocks[layer], hooks[0]) for layer in LAYERS}
    handles = [module.register_forward_hook(
        lambda module, inputs, output, layer=layer, reader=reader: read.__setitem__(layer, reader(inputs, output)[:, 1:]))
        for layer, (module, reader) in points.items()]
    with torch.no_grad():
        model(input_ids=ids)
    recorder.close()
    for handle in handles:
        handle.remove()
    for layer in LAYERS:
        x, y = recorder.captured[layer]
        their_x, their_y = (t[:, 1:] for t in theirs[layer])
        scale = max(float(x.abs().max()), float(y.abs().max()))
        assert float((their_x - x).abs().max()) <= 1e-5 * scale and float((their_y - y).abs().max()) <= 1e-5 * scale
        assert torch.equal(read[layer], x)
