"""Transcoder math on known inputs, file format compatibility with circuit-tracer, training."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from circuitflow.activations import ShardWriters, activation_schema
from circuitflow.config import TrainingSettings, TrainTranscoderSettings, TranscoderArchitecture, WriteTranscoderSetSettings
from circuitflow.io import read_json, write_json
from circuitflow.transcoders import (
    ReluTopK,
    Transcoder,
    TranscoderSetError,
    architecture_path,
    load_transcoder,
    load_transcoder_set,
    read_transcoder_set,
    save_transcoder,
    to_circuit_tracer,
    train_transcoder,
    write_transcoder_set,
)
from circuitflow.transcoders.trainer import fvu
from circuitflow.transcoders.training import auxk_loss, topk_forward


def arch(activation="topk", n_features=10, k=3, skip=False) -> TranscoderArchitecture:
    return TranscoderArchitecture(activation=activation, n_features=n_features, k=k, skip_connection=skip)


def random_transcoder(activation: str, d_model=6, n_features=10, k=3, skip=False, seed=0) -> Transcoder:
    torch.manual_seed(seed)
    tc = Transcoder(d_model, arch(activation, n_features, k, skip))
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
    tc = Transcoder(2, arch("topk", n_features=3, k=1))
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
    tc = Transcoder(2, arch("topk", n_features=4, k=1))
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
    save_transcoder(tc, 0, path)
    theirs = load_relu_transcoder(str(path), 0, device=torch.device("cpu"), dtype=torch.float32,
                                  lazy_encoder=False, lazy_decoder=False)
    x = torch.randn(20, tc.d_model)
    with torch.no_grad():
        ours = tc(x)
        assert torch.equal(theirs(x), ours)
        assert torch.equal(load_transcoder(path)(x), ours)
        architecture_path(path).unlink()  # circuit-tracer's own files have no architecture JSON
        assert torch.equal(load_transcoder(path)(x), ours)
        assert (tc.encode(x) > 0).any() and (tc.encode(x) == 0).any()


def fake_model_dir(folder, n_layers=3, d_model=6):
    """What write_transcoder_set reads of a model: its config.json."""
    write_json(folder / "config.json", {"num_hidden_layers": n_layers, "hidden_size": d_model})
    return folder


def write_set(tmp_path, layers, model_dir, kinds=None):
    weights, originals = {}, {}
    for layer in layers:
        tc = random_transcoder((kinds or {}).get(layer, "topk"), seed=layer, skip=True)
        weights[layer] = tmp_path / "tc" / f"layer_{layer}.safetensors"
        save_transcoder(tc, layer, weights[layer])
        originals[layer] = tc
    settings = WriteTranscoderSetSettings(layers=tuple(layers), scan="./data/features")
    return originals, weights, lambda: write_transcoder_set(model_dir=model_dir, weights=list(weights.values()),
                                                            out_config=tmp_path / "tc" / "config.yaml",
                                                            settings=settings)


def test_topk_set_round_trip(tmp_path):
    """TopK files + config.yaml rebuild a circuit-tracer TranscoderSet with the same outputs."""
    originals, _, write = write_set(tmp_path, range(3), fake_model_dir(tmp_path))
    config = write()
    assert config["activation"] == "topk" and config["k"] == 3
    assert config["layers"] == {0: "layer_0.safetensors", 1: "layer_1.safetensors", 2: "layer_2.safetensors"}
    assert config["transcoders"] == [str((tmp_path / "tc" / f"layer_{i}.safetensors").resolve()) for i in range(3)]
    transcoder_set = load_transcoder_set(tmp_path / "tc" / "config.yaml", n_layers=3, d_model=6)
    assert transcoder_set.feature_input_hook == "mlp.hook_in" and transcoder_set.scan == "./data/features"
    x = torch.randn(15, 6)
    with torch.no_grad():
        for layer, tc in originals.items():
            assert torch.equal(transcoder_set[layer](x), tc(x))
            assert torch.equal(transcoder_set[layer].encode(x), tc.encode(x))
    with pytest.raises(ValueError, match="d_model 6 but the model has 8"):
        load_transcoder_set(tmp_path / "tc" / "config.yaml", n_layers=3, d_model=8)


def test_jumprelu_set_loads_with_circuit_tracers_own_loader(tmp_path, monkeypatch):
    """circuit-tracer's `load_transcoders` on our config.yaml, from another working directory,
    gives transcoders with our outputs and features."""
    import yaml
    from circuit_tracer.utils.hf_utils import load_transcoders

    originals, _, write = write_set(tmp_path, range(3), fake_model_dir(tmp_path), kinds=dict.fromkeys(range(3), "jumprelu"))
    write()
    monkeypatch.chdir(tmp_path.parent)
    config = yaml.safe_load((tmp_path / "tc" / "config.yaml").read_text())
    assert config["activation"] == "jumprelu" and config["k"] is None
    theirs = load_transcoders(config, device=torch.device("cpu"), dtype=torch.float32, lazy_decoder=False)
    assert theirs.scan == "./data/features" and theirs.feature_output_hook == "mlp.hook_out"
    x = torch.randn(15, 6)
    with torch.no_grad():
        for layer, tc in originals.items():
            assert torch.equal(theirs[layer].encode(x), tc.encode(x))
            assert torch.allclose(theirs[layer](x), tc(x), atol=1e-6)


def test_partial_set_keeps_layer_numbers(tmp_path):
    """Layers 0 and 2 of a 3-layer model: the set maps real layer numbers, and attribution,
    which needs every layer, says which one is missing."""
    originals, weights, write = write_set(tmp_path, [0, 2], fake_model_dir(tmp_path))
    config = write()
    assert config["layers"] == {0: "layer_0.safetensors", 2: "layer_2.safetensors"}
    assert "transcoders" not in config  # circuit-tracer's positional list would call layer 2 "1"
    parsed = read_transcoder_set(tmp_path / "tc" / "config.yaml")
    assert parsed.layers == {0: weights[0], 2: weights[2]}
    assert torch.equal(load_transcoder(parsed.layers[2]).W_enc, originals[2].W_enc)
    with pytest.raises(TranscoderSetError, match=r"layer\(s\) \[1\], but .* has them for layers \[0, 2\]"):
        load_transcoder_set(tmp_path / "tc" / "config.yaml", n_layers=3)


def test_set_checks_every_layer_against_the_model(tmp_path):
    _, _, write = write_set(tmp_path, range(3), fake_model_dir(tmp_path, d_model=8))
    with pytest.raises(TranscoderSetError, match=r"W_enc has shape \[10, 6\], expected \[10, 8\]"):
        write()
    assert not (tmp_path / "tc" / "config.yaml").exists()
    _, _, write = write_set(tmp_path, range(3), fake_model_dir(tmp_path), kinds={2: "relu"})
    with pytest.raises(TranscoderSetError, match="layer 2's transcoder has {'activation': 'relu'}"):
        write()


def test_set_config_that_does_not_match_its_files_is_named(tmp_path):
    import yaml

    _, weights, write = write_set(tmp_path, range(3), fake_model_dir(tmp_path))
    write()
    path = tmp_path / "tc" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    swapped = {**config, "layers": {0: "layer_1.safetensors", 1: "layer_0.safetensors", 2: "layer_2.safetensors"}}
    path.write_text(yaml.safe_dump(swapped))
    with pytest.raises(TranscoderSetError, match=r"config.yaml: .*layer_1.architecture.json is for layer 1, not 0"):
        read_transcoder_set(path)
    path.write_text(yaml.safe_dump({**config, "activation": "jumprelu", "k": None}))
    with pytest.raises(TranscoderSetError, match="says activation 'jumprelu', but layer_0.safetensors is 'topk'"):
        read_transcoder_set(path)
    path.write_text(yaml.safe_dump(config))
    weights[2].unlink()
    with pytest.raises(TranscoderSetError, match="for layer 2, but that file does not exist"):
        read_transcoder_set(path)


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
    with ShardWriters({0: str(path)}, schema, 1000) as writers:
        for s in range(0, n_tokens, 500):
            n = min(500, n_tokens - s)
            writers.append(0, {"seq": np.zeros(n, np.int32), "pos": np.ones(n, np.int32),
                               "doc": np.zeros(n, np.int32), "token": np.zeros(n, np.int32)},
                           x[s:s + n].astype(np.float16), y[s:s + n].astype(np.float16))


def train_settings(architecture: TranscoderArchitecture, **training) -> TrainTranscoderSettings:
    return TrainTranscoderSettings(architecture=architecture, training=TrainingSettings(**training))


def train(shard, settings, folder, name):
    out = (folder / f"{name}.safetensors", folder / f"{name}.architecture.json", folder / f"{name}.json")
    return train_transcoder(shard_path=shard, layer=0, out_weights=out[0], out_architecture=out[1], out_metrics=out[2],
                            settings=settings)


@pytest.mark.parametrize("activation", ["topk", "jumprelu", "relu"])
def test_training_learns_and_is_deterministic(tmp_path, activation):
    shard = tmp_path / "layer_0.parquet"
    _write_synthetic_shard(shard)
    training = dict(steps=400, batch_size=256, lr=1e-2, warmup_steps=10, eval_tokens=500, dead_tokens=2000,
                    l1_coefficient=1e-4, seed=3, device="cpu")
    settings = train_settings(arch(activation, n_features=64, k=8), **training)
    a = train(shard, settings, tmp_path, "a")
    b = train(shard, settings, tmp_path, "b")
    # byte-identical files: the weights file holds only tensors, the architecture sits beside it
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert a["fvu"] == b["fvu"] < 0.3  # the mean predictor scores 1.0
    metrics = read_json(tmp_path / "a.json")
    assert metrics["tokens_seen"] == 400 * 256 and metrics["training"]["seed"] == 3
    assert "k" not in metrics["training"]  # the architecture is stored once, beside the weights
    assert read_json(tmp_path / "a.architecture.json")["activation"] == activation
    tc = load_transcoder(tmp_path / "a.safetensors")
    assert (tc.activation, tc.k, tc.n_features) == (activation, 8, 64)
    assert torch.allclose(tc.W_dec.norm(dim=-1), torch.ones(64), atol=1e-5)  # unit-norm rows
    other = train(shard, train_settings(arch(activation, n_features=64, k=8), **{**training, "seed": 4}),
                  tmp_path, "c")
    assert (tmp_path / "c.safetensors").read_bytes() != (tmp_path / "a.safetensors").read_bytes()
    assert other["fvu"] < 0.3


def test_b_dec_starts_at_mean_output(tmp_path):
    shard = tmp_path / "layer_0.parquet"
    _write_synthetic_shard(shard)
    settings = train_settings(arch(n_features=32, k=4), steps=1, batch_size=256, lr=1e-9, warmup_steps=1,
                              eval_tokens=500)
    train(shard, settings, tmp_path, "w")
    tc = load_transcoder(tmp_path / "w.safetensors")
    from circuitflow.activations import ActivationShard

    shard_data = ActivationShard(shard)
    y = np.concatenate([shard_data.read_row_group(i)["mlp_out"] for i in range(len(shard_data.row_group_sizes))])
    mean, spread = y.astype(np.float64).mean(0), y.astype(np.float64).std(0)
    # b_dec is the mean of one 256-token batch: within a few standard errors of the data mean
    assert np.all(np.abs(tc.b_dec.detach().numpy() - mean) < 4 * spread / np.sqrt(256) + 1e-3)
    assert np.abs(mean).max() > 0.3  # (the data mean is far from zero, so this is not vacuous)


def test_k_equal_to_n_features_is_refused_by_the_module_and_both_trainers(tmp_path):
    """One rule (config_rules.check_sparsity, whose messages test_config_rules checks) everywhere:
    the module once accepted k == n_features for topk. The trainers refuse before reading a shard."""
    from circuitflow.config import TrainCrossLayerTranscoderSettings
    from circuitflow.config_rules import ConfigError
    from circuitflow.transcoders.cross_layer_training import train_cross_layer_transcoder

    refused = "transcoder.k 10 must be below transcoder.n_features 10"
    with pytest.raises(ConfigError, match=refused):
        Transcoder(4, arch("topk", n_features=10, k=10))
    Transcoder(4, arch("jumprelu", n_features=10, k=10))  # a loaded jumprelu file does not apply k
    for activation in ("topk", "jumprelu"):
        with pytest.raises(ConfigError, match=refused):
            train_transcoder(shard_path=tmp_path / "absent.parquet", layer=0, out_weights=tmp_path / "w.safetensors",
                             out_architecture=tmp_path / "w.architecture.json", out_metrics=tmp_path / "w.json",
                             settings=train_settings(arch(activation, n_features=10, k=10)))
    clt = TrainCrossLayerTranscoderSettings(layers=(0, 1), architecture=arch("jumprelu", n_features=10, k=10))
    with pytest.raises(ConfigError, match=refused):
        train_cross_layer_transcoder(shard_paths=[tmp_path / "absent.parquet"] * 2, out_dir=tmp_path / "clt",
                                     out_metrics=tmp_path / "clt.json", settings=clt)


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="activation 'gelu'"):
        Transcoder(4, arch("gelu"))
    shard = tmp_path / "layer_0.parquet"
    _write_synthetic_shard(shard, n_tokens=600)
    with pytest.raises(ValueError, match="too few"):
        train(shard, train_settings(arch(), eval_tokens=500, batch_size=256), tmp_path, "w")
    assert not (tmp_path / "w.safetensors").exists()


def test_jumprelu_thresholds_keep_topk_sparsity_and_fidelity(tmp_path):
    """TopK training, then thresholds: held-out L0 stays near k and FVU near TopK's."""
    shard = tmp_path / "layer_0.parquet"
    _write_synthetic_shard(shard, n_tokens=9000)
    training = dict(steps=300, batch_size=256, lr=1e-2, warmup_steps=10, eval_tokens=1000, dead_tokens=2000,
                    calibration_tokens=4000, seed=3, device="cpu")
    metrics = train(shard, train_settings(arch("jumprelu", n_features=64, k=8), **training), tmp_path, "j")
    topk = metrics["calibration"]["topk_before_calibration"]
    assert metrics["calibration"]["calibration_tokens"] == 4000
    calibration = metrics["calibration"]
    assert calibration["jumprelu_l0_on_calibration"] <= 1.05 * calibration["topk_l0_on_calibration"]
    # the chosen factor is the best allowed one on the calibration tokens
    allowed = [c for c in calibration["factors_tried"] if c["l0"] <= 1.05 * calibration["topk_l0_on_calibration"]]
    assert calibration["jumprelu_fvu_on_calibration"] == min(c["fvu"] for c in allowed)
    # held out: no denser than TopK, and about as faithful (on this synthetic data, whose true
    # codes are themselves thresholded, higher thresholds even win: FVU 0.310 at L0 4.1 vs 0.322 at 7.1)
    assert 4 < topk["l0"] <= 8 and metrics["l0"] <= 1.1 * topk["l0"]
    assert metrics["fvu"] < topk["fvu"] + 0.02
    tc = load_transcoder(tmp_path / "j.safetensors")
    assert tc.activation == "jumprelu" and (tc.threshold >= 0).all() and (tc.threshold > 0).any()


def test_straight_through_threshold_gradient_by_hand():
    from circuitflow.transcoders.jumprelu_ste import jumprelu_ste

    pre = torch.tensor([[0.98, 1.5, 0.2], [1.01, 0.5, 3.0]], requires_grad=True)
    threshold = torch.tensor([1.0, 1.0, 1.0], requires_grad=True)
    acts, l0 = jumprelu_ste(pre, threshold, bandwidth=0.1)
    assert torch.equal(acts.detach(), torch.tensor([[0.0, 1.5, 0.0], [1.01, 0.0, 3.0]]))
    assert torch.equal(l0.detach(), torch.tensor([1.0, 2.0]))
    (acts.sum() + l0.sum()).backward()
    # only the two pre-activations within 0.05 of feature 0's threshold move it: each by
    # -(theta / bw) from acts and -(1 / bw) from L0
    assert torch.allclose(threshold.grad, torch.tensor([2 * (-10.0 - 10.0), 0.0, 0.0]))
    assert torch.equal(pre.grad, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]))


def test_jumprelu_trained_straight_through_keeps_l0_at_most_k(tmp_path):
    shard = tmp_path / "layer_0.parquet"
    _write_synthetic_shard(shard, n_tokens=9000)
    training = dict(steps=300, batch_size=256, lr=1e-2, warmup_steps=10, eval_tokens=1000, dead_tokens=2000,
                    jumprelu_training="ste", seed=3, device="cpu")
    metrics = train(shard, train_settings(arch("jumprelu", n_features=64, k=8), **training), tmp_path, "s")
    assert "calibration" not in metrics
    # The penalty keeps L0 from exceeding k = 8. On this data, whose true codes are themselves
    # thresholded, the reconstruction alone prefers fewer (L0 3.0): the controller then lowers
    # its coefficient towards 0 rather than pushing L0 up.
    assert 1 < metrics["l0"] <= 8 * 1.2
    assert metrics["ste"]["final_l0_coefficient"] < 0.1
    assert metrics["fvu"] < 0.3  # the mean predictor scores 1.0
    tc = load_transcoder(tmp_path / "s.safetensors")
    assert tc.activation == "jumprelu" and (tc.threshold >= 0).all() and (tc.threshold > 0).any()


def test_layers_trained_in_one_job_match_one_job_per_layer_and_are_linked_into_the_set(tmp_path):
    """train_transcoders (two layers, one process) writes byte-identical weights to two separate
    train_transcoder calls; write_transcoder_set links each layer's three files into place from
    the job's folder, newer than the folder (or Snakemake would redo it), and refuses a missing one."""
    import os
    import time

    from circuitflow.transcoders import train_transcoders
    from circuitflow.transcoders.sets import TranscoderSetError

    shards = [tmp_path / f"layer_{layer}.parquet" for layer in (0, 1)]
    for layer, shard in enumerate(shards):
        _write_synthetic_shard(shard, n_tokens=3000, seed=layer)
    settings = train_settings(arch("topk", n_features=32, k=4), steps=20, batch_size=256, warmup_steps=2,
                              eval_tokens=500, dead_tokens=2000, seed=3, device="cpu")
    group = tmp_path / "transcoders" / "training" / "layers_0-1"
    grouped = train_transcoders(shard_paths=shards, layers=[0, 1], out_dir=group,
                                checkpoint_dir=tmp_path / "transcoders" / "checkpoints", settings=settings)
    assert [m["layer"] for m in grouped] == [0, 1]
    for layer, shard in enumerate(shards):
        alone = tmp_path / "alone"
        train_transcoder(shard_path=shard, layer=layer, out_weights=alone / f"layer_{layer}.safetensors",
                         out_architecture=alone / f"layer_{layer}.architecture.json",
                         out_metrics=alone / f"layer_{layer}.metrics.json", settings=settings)
        assert (alone / f"layer_{layer}.safetensors").read_bytes() == (group / f"layer_{layer}.safetensors").read_bytes()
    assert not list((tmp_path / "transcoders" / "checkpoints").glob("*.pt"))

    (group / ".snakemake_timestamp").touch()
    finished = (group / ".snakemake_timestamp").stat().st_mtime
    time.sleep(0.01)
    folder = tmp_path / "transcoders"
    placed = {kind: [folder / f"layer_{layer}{suffix}" for layer in (0, 1)]
              for kind, suffix in (("weights", ".safetensors"), ("architectures", ".architecture.json"),
                                   ("metrics", ".metrics.json"))}
    model_dir = fake_model_dir(tmp_path / "model", n_layers=2, d_model=16)
    config = write_transcoder_set(model_dir=model_dir, weights=placed["weights"], trained=[group],
                                  architectures=placed["architectures"], metrics=placed["metrics"],
                                  out_config=folder / "config.yaml",
                                  settings=WriteTranscoderSetSettings(layers=(0, 1), scan="s"))
    assert config["layers"] == {0: "layer_0.safetensors", 1: "layer_1.safetensors"}
    for path in (p for paths in placed.values() for p in paths):
        assert path.read_bytes() == (group / path.name).read_bytes() and path.stat().st_mtime > finished
    assert os.path.samefile(placed["weights"][0], group / "layer_0.safetensors")  # a link, not a copy

    (group / "layer_1.metrics.json").unlink()
    with pytest.raises(TranscoderSetError, match="layer_1.metrics.json is in none of the training folders"):
        write_transcoder_set(model_dir=model_dir, weights=placed["weights"], trained=[group],
                             architectures=placed["architectures"], metrics=placed["metrics"],
                             out_config=folder / "config.yaml", settings=WriteTranscoderSetSettings(layers=(0, 1)))


KILL_AFTER_SECOND_CHECKPOINT = """
import os, signal, sys
from circuitflow.transcoders import trainer, training
save = trainer.Checkpoint.save
calls = []
def save_then_die(self, *args, **kwargs):
    save(self, *args, **kwargs)
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
trainer.Checkpoint.save = save_then_die
from circuitflow.config import TrainTranscoderSettings, from_params
import json
settings = from_params(TrainTranscoderSettings, json.loads(sys.argv[2]))
out = sys.argv[3]
training.train_transcoder(shard_path=sys.argv[1], layer=0, out_weights=out + ".safetensors",
                          out_architecture=out + ".architecture.json", out_metrics=out + ".json", settings=settings)
"""


def test_training_resumes_after_kill_9_with_identical_weights(tmp_path, caplog):
    """kill -9 right after the second checkpoint; the rerun resumes and ends byte-identical to an
    uninterrupted run; a checkpoint from other settings is not resumed."""
    import subprocess
    import sys

    from circuitflow.config import as_params

    shard = tmp_path / "layer_0.parquet"
    _write_synthetic_shard(shard)
    settings = train_settings(arch("topk", n_features=64, k=8), steps=50, batch_size=256, warmup_steps=5,
                              eval_tokens=500, dead_tokens=2000, checkpoint_every=10, seed=3, device="cpu")
    uninterrupted = train(shard, settings, tmp_path / "a", "layer_0")
    assert uninterrupted["resumed_from_step"] == 0
    assert not (tmp_path / "a" / "checkpoints" / "layer_0.pt").exists()  # removed once the weights are written

    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_SECOND_CHECKPOINT, str(shard),
                             json.dumps(as_params(settings)), str(tmp_path / "b" / "layer_0")])
    assert killed.returncode == -9
    assert (tmp_path / "b" / "checkpoints" / "layer_0.pt").is_file()
    assert not (tmp_path / "b" / "layer_0.safetensors").exists()
    resumed = train(shard, settings, tmp_path / "b", "layer_0")
    assert resumed["resumed_from_step"] == 20
    assert (tmp_path / "b" / "layer_0.safetensors").read_bytes() == (tmp_path / "a" / "layer_0.safetensors").read_bytes()
    assert resumed["curve"] == uninterrupted["curve"] and resumed["fvu"] == uninterrupted["fvu"]

    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_SECOND_CHECKPOINT, str(shard),
                             json.dumps(as_params(settings)), str(tmp_path / "c" / "layer_0")])
    assert killed.returncode == -9
    other = train_settings(arch("topk", n_features=64, k=8), steps=50, batch_size=256, warmup_steps=5,
                           eval_tokens=500, dead_tokens=2000, checkpoint_every=10, seed=4, device="cpu")
    assert train(shard, other, tmp_path / "c", "layer_0")["resumed_from_step"] == 0

    # Another shard of the same shape (same byte size and row count, other values, as after a
    # corpus or model change) is not resumed either: the checkpoint is discarded.
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_SECOND_CHECKPOINT, str(shard),
                             json.dumps(as_params(settings)), str(tmp_path / "d" / "layer_0")])
    assert killed.returncode == -9
    size = shard.stat().st_size
    _write_synthetic_shard(shard, seed=1)
    assert shard.stat().st_size == size
    with caplog.at_level(logging.WARNING, logger="circuitflow.transcoders"):
        assert train(shard, settings, tmp_path / "d", "layer_0")["resumed_from_step"] == 0
    assert "discarding checkpoint" in caplog.text


def test_resampling_restarts_silent_latents_on_badly_reconstructed_tokens():
    """Two tokens carry all the error: the two silent latents restart on them (drawn without
    replacement), each with its token's error direction as decoder row and a pre-activation
    there equal to the error's norm, capped at RESTART_CAP x the batch's 99th-percentile
    active pre-activation; live latents and their Adam state are untouched."""
    from circuitflow.transcoders.trainer import RESTART_CAP
    from circuitflow.transcoders.training import resample_dead_latents

    tc = random_transcoder("topk", d_model=6, n_features=10, k=3)
    x = torch.randn(8, 6)
    optimizer = torch.optim.Adam(tc.parameters(), lr=1e-3)
    tc(x).sum().backward()
    optimizer.step()
    with torch.no_grad():
        cap = RESTART_CAP * float(torch.quantile(tc.pre_activations(x).topk(3, dim=-1).values.flatten(), 0.99))
    # token 5's error is below the cap, token 6's far above it
    errors = {5: torch.tensor([0.5 * cap, 0, 0, 0, 0, 0]), 6: torch.tensor([0, -10 * cap, 0, 0, 0, 0])}
    with torch.no_grad():
        y = tc(x)
        for token, error in errors.items():
            y[token] += error
    silent = torch.zeros(10, dtype=torch.bool)
    silent[[2, 7]] = True
    before = tc.W_enc.detach().clone()
    assert resample_dead_latents(tc, optimizer, x, y, silent, torch.Generator().manual_seed(0)) == 2
    with torch.no_grad():
        pre = tc.pre_activations(x)
        restarted_on = set()
        for j in (2, 7):
            token = next(t for t, e in errors.items() if torch.allclose(tc.W_dec[j], e / e.norm(), atol=1e-4))
            restarted_on.add(token)
            assert float(pre[token, j]) == pytest.approx(min(float(errors[token].norm()), cap), rel=1e-3)
        assert restarted_on == {5, 6}
        assert torch.equal(tc.W_enc[~silent], before[~silent])
    state = optimizer.state[tc.W_enc]
    assert (state["exp_avg"][[2, 7]] == 0).all() and (state["exp_avg"][[0, 1]] != 0).any()


def test_batch_topk_keeps_the_batch_s_largest_pre_activations_over_all_layers():
    """BatchTopK (clt_sparsity batch): exactly k x n_layers x tokens active, the largest
    pre-activations of the whole batch, unevenly spread over layers and tokens, decoded as the
    dense product would; per_layer keeps k of each layer per token."""
    from circuitflow.transcoders.cross_layer import CrossLayerTranscoder
    from circuitflow.transcoders.cross_layer_training import _trained_activations, sparse_forward

    torch.manual_seed(0)
    n_layers, d, tokens, k = 3, 8, 20, 4
    clt = CrossLayerTranscoder(n_layers, d, arch("topk", n_features=16, k=k))
    with torch.no_grad():
        for p in clt.parameters():
            p.normal_()
        clt.W_enc[0].mul_(3)  # layer 0 reads louder: BatchTopK should give it more features
    x = torch.randn(tokens, n_layers, d)
    picked, y_hat = sparse_forward(clt, x, "batch")
    pres = torch.stack([pre.detach() for pre, *_ in picked])
    assert sum(len(acts) for _, _, acts, _ in picked) == k * n_layers * tokens
    smallest_kept = min(float(acts.detach().min()) for _, _, acts, _ in picked)
    largest_dropped = float(pres.flatten().sort(descending=True).values[k * n_layers * tokens])
    assert smallest_kept > largest_dropped
    per_layer = [len(acts) / tokens for _, _, acts, _ in picked]
    assert per_layer[0] > k > min(per_layer)
    dense = _trained_activations(clt, x, "batch")
    expected = torch.stack([clt.decode(layer, dict(enumerate(dense))) for layer in range(n_layers)], 1)
    torch.testing.assert_close(y_hat, expected, rtol=1e-4, atol=1e-4)
    y_hat.pow(2).sum().backward()
    assert clt.W_enc.grad.abs().sum() > 0 and all(w.grad is not None for w in clt.W_dec)

    dense = _trained_activations(clt, x, "per_layer")
    assert all(bool(((a > 0).sum(-1) <= k).all()) and int((a > 0).sum(-1).max()) == k for a in dense)


def test_layer_loss_weights_lean_toward_the_early_layers():
    from circuitflow.transcoders.cross_layer_training import layer_loss_weights

    assert layer_loss_weights(30, 0) is None
    weights = layer_loss_weights(30, 0.5)
    assert float(weights.mean()) == pytest.approx(1.0)
    assert bool((weights[:-1] > weights[1:]).all())
    assert float(weights[0] / weights[3]) == pytest.approx(2.0)  # (1 / 4) ** -0.5


def test_cross_layer_loss_optimises_the_weighted_fvus_and_reports_the_plain_mean(tmp_path):
    """clt_layer_weight_exponent reaches the objective the optimizer sees; the reported loss_fvu
    stays the plain mean over layers (so runs with different exponents compare)."""
    from types import SimpleNamespace

    from circuitflow.transcoders.cross_layer import CrossLayerTranscoder
    from circuitflow.transcoders.cross_layer_training import CrossLayerKind, _layer_fvus, layer_loss_weights, sparse_forward

    torch.manual_seed(0)
    n_layers, d, tokens = 3, 8, 64
    architecture = arch("topk", n_features=16, k=4)
    model = CrossLayerTranscoder(n_layers, d, architecture)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    x, y = torch.randn(tokens, n_layers, d), torch.randn(tokens, n_layers, d)
    shards = [SimpleNamespace(d_model=d)] * n_layers  # the kind reads only their number and width here
    never_dead = torch.zeros(n_layers, 16)
    results = {}
    for exponent in (0.0, 2.0):
        settings = TrainingSettings(clt_layer_weight_exponent=exponent, auxk_alpha=0.0)
        kind = CrossLayerKind(shards, architecture, settings, tmp_path, tmp_path / "m.json")
        loss_fvu, _, objective, _ = kind.loss(model, x, y, never_dead)
        results[exponent] = float(loss_fvu.detach()), float(objective.detach())
    assert results[0.0][0] == pytest.approx(results[2.0][0])  # the same plain mean either way
    assert results[0.0][1] == pytest.approx(results[0.0][0])
    fvus = _layer_fvus(y, sparse_forward(model, x)[1]).detach()
    assert results[2.0][1] == pytest.approx(float((fvus * layer_loss_weights(n_layers, 2.0)).mean()))
    assert results[2.0][1] != pytest.approx(results[2.0][0])
