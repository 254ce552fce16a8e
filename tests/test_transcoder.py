"""Transcoder math on known inputs, file format compatibility with circuit-tracer, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuitflow.activations import _ShardWriters, activation_schema
from circuitflow.io import read_json
from circuitflow.transcoder import (
    ReluTopK,
    TrainSettings,
    Transcoder,
    auxk_loss,
    fvu,
    load_transcoder,
    load_transcoder_set,
    save_transcoder,
    to_circuit_tracer,
    topk_forward,
    train_transcoder,
    write_transcoder_set_config,
)


def random_transcoder(activation: str, d_model=6, n_features=10, k=3, skip=False, seed=0) -> Transcoder:
    torch.manual_seed(seed)
    tc = Transcoder(d_model, n_features, activation, k, skip_connection=skip)
    with torch.no_grad():
        for p in tc.parameters():
            p.normal_()
        if tc.threshold is not None:
            tc.threshold.uniform_(0.0, 1.0)
    return tc


def test_relu_topk_on_known_input():
    pre = torch.tensor([[3.0, -1.0, 2.0, 0.5], [-3.0, -2.0, -1.0, 4.0]])
    out = ReluTopK(2)(pre)
    # row 0 keeps 3 and 2; row 1 keeps 4 and -1, and the ReLU zeroes the -1
    assert torch.equal(out, torch.tensor([[3.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 4.0]]))


def test_topk_transcoder_forward_by_hand():
    tc = Transcoder(d_model=2, n_features=3, activation="topk", k=1)
    with torch.no_grad():
        tc.W_enc.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        tc.b_enc.copy_(torch.tensor([0.0, 0.0, -5.0]))
        tc.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
        tc.b_dec.copy_(torch.tensor([0.5, -0.5]))
    x = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
    # pre = [[2, 1, -2], [1, 3, -1]] -> top-1: feature 0 (2.0), feature 1 (3.0)
    expected = torch.tensor([[2.5, -0.5], [0.5, 2.5]])
    assert torch.allclose(tc(x), expected)
    _, indices, acts, y_hat = topk_forward(tc, x)  # the sparse training path agrees
    assert indices.squeeze(-1).tolist() == [0, 1] and acts.squeeze(-1).tolist() == [2.0, 3.0]
    assert torch.allclose(y_hat, expected)


def test_fvu_known_values():
    y = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # mean [2, 0], total variance 2
    assert fvu(y, y).item() == 0.0
    assert fvu(y, y.mean(0).expand_as(y)).item() == pytest.approx(1.0)
    assert fvu(y, torch.tensor([[1.0, 1.0], [3.0, 1.0]])).item() == pytest.approx(1.0)


def test_auxk_uses_only_dead_latents():
    tc = Transcoder(d_model=2, n_features=4, activation="topk", k=1)
    with torch.no_grad():
        tc.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))
    pre = torch.tensor([[5.0, 4.0, 1.0, 2.0], [5.0, 4.0, 3.0, 0.5]])
    residual = torch.tensor([[0.0, 2.0], [3.0, 0.0]])
    dead = torch.tensor([False, False, True, True])
    # k_aux = min(d_model / 2, n_dead) = 1: row 0 picks latent 3 (2.0 -> [0, 2]),
    # row 1 picks latent 2 (3.0 -> [3, 0]): a perfect reconstruction of the residual
    assert auxk_loss(tc, pre, residual, dead).item() == pytest.approx(0.0, abs=1e-7)
    assert auxk_loss(tc, pre, residual, torch.zeros(4, dtype=torch.bool)).item() == 0.0
    only_2 = torch.tensor([False, False, True, False])
    # latent 2 alone explains row 1 but not row 0; scale = min(1/1, 1) = 1
    expected = fvu(residual, torch.tensor([[1.0, 0.0], [3.0, 0.0]]))
    assert auxk_loss(tc, pre, residual, only_2).item() == pytest.approx(expected.item())


@pytest.mark.parametrize("activation,skip", [("relu", False), ("relu", True), ("jumprelu", False), ("jumprelu", True)])
def test_file_loads_with_circuit_tracer_loader(tmp_path, activation, skip):
    """ReLU/JumpReLU files load with circuit-tracer's own loader and reconstruct identically."""
    from circuit_tracer.transcoder.single_layer_transcoder import load_relu_transcoder

    tc = random_transcoder(activation, skip=skip)
    path = tmp_path / "layer_0.safetensors"
    save_transcoder(tc, path)
    theirs = load_relu_transcoder(str(path), 0, device=torch.device("cpu"), dtype=torch.float32,
                                  lazy_encoder=False, lazy_decoder=False)
    x = torch.randn(20, tc.d_model)
    with torch.no_grad():
        ours = tc(x)
        assert torch.equal(theirs(x), ours)
        assert torch.equal(load_transcoder(path)(x), ours)
        assert (tc.encode(x) > 0).any() and (tc.encode(x) == 0).any()


def test_topk_set_round_trip(tmp_path):
    """TopK files + config.yaml rebuild a circuit-tracer TranscoderSet with the same outputs."""
    weights = {}
    originals = {}
    for layer in range(3):
        tc = random_transcoder("topk", seed=layer, skip=True)
        weights[layer] = tmp_path / "tc" / f"layer_{layer}.safetensors"
        save_transcoder(tc, weights[layer], {"layer": layer})
        originals[layer] = tc
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    config = write_transcoder_set_config(weights, tmp_path / "tc" / "config.yaml", model_dir, "./data/features")
    assert config["activation"] == "topk" and config["k"] == 3
    assert config["transcoders"] == ["layer_0.safetensors", "layer_1.safetensors", "layer_2.safetensors"]
    transcoder_set = load_transcoder_set(tmp_path / "tc" / "config.yaml", d_model=6)
    assert transcoder_set.feature_input_hook == "mlp.hook_in" and transcoder_set.scan == "./data/features"
    x = torch.randn(15, 6)
    with torch.no_grad():
        for layer, tc in originals.items():
            assert torch.equal(transcoder_set[layer](x), tc(x))
            assert int((transcoder_set[layer].encode(x) > 0).sum(-1).max()) <= 3
    with pytest.raises(ValueError, match="d_model 6 but the model has 8"):
        load_transcoder_set(tmp_path / "tc" / "config.yaml", d_model=8)


def test_to_circuit_tracer_sparse_path_matches():
    """circuit-tracer's sparse encode/decode (used in attribution) equals our dense forward."""
    tc = random_transcoder("topk", d_model=8, n_features=16, k=4)
    theirs = to_circuit_tracer(tc, 0)
    x = torch.randn(5, 8)
    with torch.no_grad():
        sparse, _ = theirs.encode_sparse(x, zero_positions=slice(0, 0))
        recon, _ = theirs.decode_sparse(sparse, x)
        assert torch.allclose(recon, tc(x), atol=1e-5)


def _write_synthetic_shard(path, n_tokens=6000, d_model=16, n_true=24, seed=0):
    """MLP-like data generated by a sparse dictionary, so a transcoder can learn it."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_tokens, d_model)).astype(np.float32)
    enc = rng.standard_normal((n_true, d_model)).astype(np.float32)
    enc /= np.linalg.norm(enc, axis=1, keepdims=True)
    dec = rng.standard_normal((n_true, d_model)).astype(np.float32)
    codes = np.maximum(x @ enc.T - 1.5, 0)  # about 1.6 of 24 true features active per token
    y = codes @ dec + 0.5
    schema = activation_schema(d_model, "float16")
    with _ShardWriters({0: str(path)}, schema, 1000) as writers:
        for s in range(0, n_tokens, 500):
            n = min(500, n_tokens - s)
            writers.append(0, {"seq": np.zeros(n, np.int32), "pos": np.ones(n, np.int32),
                               "doc": np.zeros(n, np.int32), "token": np.zeros(n, np.int32)},
                           x[s:s + n].astype(np.float16), y[s:s + n].astype(np.float16))


def _tensors(path) -> dict[str, bytes]:
    from safetensors.torch import load_file

    return {name: t.numpy().tobytes() for name, t in load_file(str(path)).items()}


@pytest.mark.parametrize("activation", ["topk", "relu"])
def test_training_learns_and_is_deterministic(tmp_path, activation):
    shard = tmp_path / "layer_0.parquet"
    _write_synthetic_shard(shard)
    settings = TrainSettings(n_features=64, activation=activation, k=8, steps=400, batch_size=256,
                             lr=1e-2, warmup_steps=10, eval_tokens=500, dead_tokens=2000,
                             l1_coefficient=1e-4, seed=3)
    a = train_transcoder(shard, 0, settings, tmp_path / "a.safetensors", tmp_path / "a.json")
    b = train_transcoder(shard, 0, settings, tmp_path / "b.safetensors", tmp_path / "b.json")
    # identical tensors (the safetensors header orders its metadata map arbitrarily)
    assert _tensors(tmp_path / "a.safetensors") == _tensors(tmp_path / "b.safetensors")
    assert a["fvu"] == b["fvu"] < 0.3  # the mean predictor scores 1.0
    assert read_json(tmp_path / "a.json")["tokens_seen"] == 400 * 256
    tc = load_transcoder(tmp_path / "a.safetensors")
    assert torch.allclose(tc.W_dec.norm(dim=-1), torch.ones(64), atol=1e-5)  # unit-norm rows
    if activation == "topk":
        assert a["l0"] <= 8
    other = train_transcoder(shard, 0, TrainSettings(**{**settings.__dict__, "seed": 4}),
                             tmp_path / "c.safetensors", tmp_path / "c.json")
    assert _tensors(tmp_path / "c.safetensors") != _tensors(tmp_path / "a.safetensors")
    assert other["fvu"] < 0.3


def test_b_dec_starts_at_mean_output(tmp_path):
    shard = tmp_path / "layer_0.parquet"
    _write_synthetic_shard(shard)
    settings = TrainSettings(n_features=32, k=4, steps=1, batch_size=256, lr=1e-9, warmup_steps=1,
                             eval_tokens=500)
    train_transcoder(shard, 0, settings, tmp_path / "w.safetensors", tmp_path / "m.json")
    tc = load_transcoder(tmp_path / "w.safetensors")
    from circuitflow.activations import ActivationShard

    shard_data = ActivationShard(shard)
    y = np.concatenate([shard_data.read_row_group(i)["mlp_out"] for i in range(len(shard_data.row_group_sizes))])
    mean, spread = y.astype(np.float64).mean(0), y.astype(np.float64).std(0)
    # b_dec is the mean of one 256-token batch: within a few standard errors of the data mean
    assert np.all(np.abs(tc.b_dec.detach().numpy() - mean) < 4 * spread / np.sqrt(256) + 1e-3)
    assert np.abs(mean).max() > 0.3  # (the data mean is far from zero, so this is not vacuous)


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="k=50"):
        Transcoder(4, 10, "topk", k=50)
    with pytest.raises(ValueError, match="activation 'gelu'"):
        Transcoder(4, 10, "gelu")
    shard = tmp_path / "layer_0.parquet"
    _write_synthetic_shard(shard, n_tokens=600)
    with pytest.raises(ValueError, match="too few"):
        train_transcoder(shard, 0, TrainSettings(eval_tokens=500, batch_size=256), tmp_path / "w", tmp_path / "m")
    assert not (tmp_path / "w").exists()
