"""A cross-layer transcoder trained by circuitflow on the tiny model: circuit-tracer's own
`load_clt` and its CLI read it unchanged and give our graph; fidelity, features and bad files."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from circuitflow.attribution.attribute import load_replacement_model
from circuitflow.config import (
    EvaluateTranscodersSettings,
    TrainCrossLayerTranscoderSettings,
    TrainingSettings,
    TranscoderArchitecture,
    WriteTranscoderSetSettings,
)
from circuitflow.model import load_model
from circuitflow.transcoders import (
    TranscoderSetError,
    evaluate_transcoders,
    load_cross_layer_transcoder,
    read_transcoder_set,
    train_cross_layer_transcoder,
    write_transcoder_set,
)

from ..conftest import tiny_shards
from .test_circuit_tracer_loader import assert_same_graph, attribute_graph, cli_graph

CLT = TranscoderArchitecture(activation="jumprelu", n_features=64, k=6, skip_connection=False)
SET_SETTINGS = WriteTranscoderSetSettings(layers=(0, 1), scan="tiny-clt", kind="clt")


def _train(tmp, shards, steps=40, sparsity="per_layer", exponent=0):
    settings = TrainCrossLayerTranscoderSettings(layers=(0, 1), architecture=CLT, training=TrainingSettings(
        steps=steps, batch_size=256, warmup_steps=4, eval_tokens=256, calibration_tokens=1024, device="cpu",
        dead_tokens=3000, clt_sparsity=sparsity, clt_layer_weight_exponent=exponent))
    return train_cross_layer_transcoder(shard_paths=shards, out_dir=tmp, out_metrics=tmp / "clt.metrics.json",
                                        settings=settings)


@pytest.fixture(scope="module")
def clt_set(tmp_path_factory, tiny_model_dir, tiny_corpus):
    """A trained CLT over both layers of the tiny model, with its set config, in a folder `tc`."""
    tmp = tmp_path_factory.mktemp("clt")
    shards = tiny_shards(tmp, tiny_model_dir, tiny_corpus)
    folder = tmp / "tc"
    metrics = _train(folder, shards)
    write_transcoder_set(model_dir=tiny_model_dir, weights=[], out_config=folder / "config.yaml", settings=SET_SETTINGS)
    return folder, metrics, shards, tmp


def test_training_learns_cross_layer_writes(clt_set):
    folder, metrics, _, _ = clt_set
    assert [row["layer"] for row in metrics["layers"]] == [0, 1]
    assert all(0 < row["fvu"] < 1 for row in metrics["layers"])
    # TopK gives k per layer; the calibrated thresholds keep it within the L0 slack
    assert metrics["calibration"]["topk_before_calibration"]["mean_l0"] == pytest.approx(CLT.k, abs=0.5)
    assert metrics["mean_l0"] <= 1.05 * metrics["calibration"]["topk_l0_on_calibration"] + 0.5
    clt = load_cross_layer_transcoder(folder, 64)
    cross = clt.W_dec[0][:, 1].detach().norm(dim=-1)  # layer 0's features' writes to layer 1: learned from zero
    assert float(cross.mean()) > 0.01
    assert clt.threshold.shape == (2, CLT.n_features) and bool((clt.threshold >= 0).all())


def test_batch_topk_shares_the_features_between_layers(clt_set, tmp_path):
    """BatchTopK training (here with the loss weighted toward layer 0): k per layer and token on
    average, not in each layer; the saved CLT is JumpReLU calibrated to those uneven rates."""
    _, per_layer, shards, _ = clt_set
    metrics = _train(tmp_path / "batch", shards, sparsity="batch", exponent=1.0)
    as_trained = metrics["calibration"]["topk_before_calibration"]
    assert as_trained["mean_l0"] == pytest.approx(CLT.k, abs=0.01)
    l0 = [row["l0"] for row in as_trained["layers"]]
    assert abs(l0[0] - l0[1]) > 0.5
    assert metrics["calibration"]["topk_l0_on_calibration"] == pytest.approx(CLT.k, abs=0.01)
    assert metrics["mean_l0"] <= 1.05 * CLT.k + 0.5
    assert all(0 < row["fvu"] < 1 for row in metrics["layers"])
    per_layer_l0 = [row["l0"] for row in per_layer["calibration"]["topk_before_calibration"]["layers"]]
    assert per_layer_l0 == pytest.approx([CLT.k, CLT.k])


def test_circuit_tracer_load_clt_reads_our_files(clt_set):
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt

    folder = clt_set[0]
    ours = load_cross_layer_transcoder(folder, 64)
    theirs = load_clt(str(folder), device=torch.device("cpu"), dtype=torch.float32, lazy_decoder=False)
    assert (theirs.n_layers, theirs.d_transcoder, theirs.d_model) == (2, CLT.n_features, 64)
    x = torch.randn(2, 50, 64) * 3
    with torch.no_grad():
        expected = ours(x.transpose(0, 1)).transpose(0, 1)
        assert torch.allclose(theirs(x), expected, atol=1e-5)
        for layer in (0, 1):
            assert torch.equal(theirs.encode_layer(x[layer], layer), ours.encode(layer, x[layer]))


def test_attribution_matches_circuit_tracer_cli(clt_set, tiny_model_dir, tmp_path):
    folder = clt_set[0]
    from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder

    from circuitflow.transcoders import load_transcoder_set

    assert isinstance(load_transcoder_set(folder / "config.yaml", 2), CrossLayerTranscoder)  # circuit-tracer's own
    model = load_replacement_model(tiny_model_dir, folder / "config.yaml", "nnsight", "cpu")
    ours = attribute_graph(model)
    assert ours.active_features.shape[0] > 0
    assert_same_graph(cli_graph(folder, tmp_path), ours)


def test_fidelity_of_a_clt(clt_set, tiny_model_dir, tmp_path):
    folder, metrics, _, tmp = clt_set
    settings = EvaluateTranscodersSettings(layers=(0, 1), windows=6, splice_windows=3, batch_size=3,
                                           dense_fraction=0.1, device="cpu")
    result = evaluate_transcoders(model_dir=tiny_model_dir, transcoder_set=folder / "config.yaml",
                                  validation_split=tmp / "validation.parquet", out_json=tmp_path / "f.json",
                                  out_csv=tmp_path / "f.csv", settings=settings)
    assert result["kind"] == "cross_layer_transcoder"
    # layer 1's prediction, recomputed here from the clean MLP inputs of both layers
    import numpy as np

    from circuitflow.data.dataset import read_windows

    model, _ = load_model(tiny_model_dir)
    ids = torch.tensor(np.asarray(read_windows(tmp / "validation.parquet").column("tokens").to_pylist()[:6]))
    captured = {}
    handles = [model.model.layers[i].mlp.register_forward_hook(
        lambda m, inp, out, i=i: captured.__setitem__(i, (inp[0][:, 1:].reshape(-1, 64), out[:, 1:].reshape(-1, 64))))
        for i in (0, 1)]
    with torch.no_grad():
        model(ids)
    for handle in handles:
        handle.remove()
    clt = load_cross_layer_transcoder(folder, 64)
    with torch.no_grad():
        y_hat = clt(torch.stack([captured[0][0], captured[1][0]], 1))
    for layer in (0, 1):
        y = captured[layer][1].double()
        expected = float((y - y_hat[:, layer].double()).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
        assert result["layers"][layer]["fvu"] == pytest.approx(expected, rel=1e-4)
    everything = result["all_layers"]
    assert everything["ce_spliced"] > 0 and everything["kl_spliced"] >= 0


def test_files_from_another_clt_are_refused(clt_set, tmp_path, tiny_model_dir):
    folder, _, shards, _ = clt_set
    other = tmp_path / "other"
    _train(other, shards, steps=3)
    mixed = tmp_path / "mixed"
    shutil.copytree(folder, mixed)
    # layer 1's thresholds (in its encoder file) from another CLT of the same shapes
    shutil.copy(other / "W_enc_1.safetensors", mixed / "W_enc_1.safetensors")
    with pytest.raises(TranscoderSetError, match=r"W_enc_1.safetensors belongs to another cross-layer transcoder"):
        read_transcoder_set(mixed / "config.yaml")
    with pytest.raises(TranscoderSetError, match="another cross-layer transcoder"):
        write_transcoder_set(model_dir=tiny_model_dir, weights=[], out_config=mixed / "config.yaml",
                             settings=SET_SETTINGS)
    # a config.yaml left from another training run, beside a retrained CLT
    config = yaml.safe_load((folder / "config.yaml").read_text())
    stale = tmp_path / "stale"
    shutil.copytree(other, stale)
    (stale / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(TranscoderSetError, match="does not describe the cross-layer transcoder beside it"):
        read_transcoder_set(stale / "config.yaml")
