"""evaluate_transcoders on the tiny model, against an independent computation of every number."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from circuitflow.config import EvaluateTranscodersSettings, TranscoderArchitecture, WriteTranscoderSetSettings
from circuitflow.config import PrepareDatasetSettings as DatasetSettings
from circuitflow.data import prepare_dataset
from circuitflow.data.dataset import read_windows
from circuitflow.model import load_model, read_model_facts
from circuitflow.transcoders import (
    Transcoder,
    TranscoderSetError,
    evaluate_transcoders,
    load_transcoder,
    save_transcoder,
    write_transcoder_set,
)

ARCH = TranscoderArchitecture(activation="topk", n_features=48, k=4, skip_connection=True)
SETTINGS = EvaluateTranscodersSettings(layers=(0, 1), windows=7, splice_windows=4, batch_size=3,
                                       dense_fraction=0.1, device="cpu")


@pytest.fixture(scope="module")
def fidelity_setup(tmp_path_factory, tiny_model_dir, tiny_corpus):
    """Validation windows; layer 0 a random TopK transcoder, layer 1 one that predicts only the
    mean MLP output of the evaluation tokens (so its FVU is exactly 1 and it never fires)."""
    tmp = tmp_path_factory.mktemp("fidelity")
    settings = DatasetSettings(source=str(tiny_corpus), context_length=24, train_tokens=300,
                               validation_tokens=500, validation_fraction=0.3)
    prepare_dataset(model_dir=tiny_model_dir, out_train=tmp / "train.parquet",
                    out_validation=tmp / "validation.parquet", out_summary=tmp / "s.json", settings=settings)
    d_model = read_model_facts(tiny_model_dir).d_model
    ids = torch.tensor(read_windows(tmp / "validation.parquet").column("tokens").to_pylist()[:SETTINGS.windows])
    model, _ = load_model(tiny_model_dir)
    outputs = []
    handle = model.model.layers[1].mlp.register_forward_hook(lambda m, i, o: outputs.append(o[:, 1:]))
    with torch.no_grad():
        model(ids)
    handle.remove()
    mean_output = outputs[0].reshape(-1, d_model).double().mean(0).float()

    random_tc, mean_tc = Transcoder(d_model, ARCH), Transcoder(d_model, ARCH)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in random_tc.parameters():
            p.normal_(0, 0.3)
        mean_tc.b_enc.fill_(-1.0)  # W_enc = 0: every pre-activation is -1, so ReLU(TopK) is 0
        mean_tc.b_dec.copy_(mean_output)
    weights = [tmp / "tc" / "layer_0.safetensors", tmp / "tc" / "layer_1.safetensors"]
    (tmp / "tc").mkdir()
    save_transcoder(random_tc, 0, weights[0])
    save_transcoder(mean_tc, 1, weights[1])
    write_transcoder_set(model_dir=tiny_model_dir, weights=weights, out_config=tmp / "tc" / "config.yaml",
                         settings=WriteTranscoderSetSettings(layers=(0, 1), scan="tiny"))
    result = evaluate_transcoders(model_dir=tiny_model_dir, transcoder_set=tmp / "tc" / "config.yaml",
                                  validation_split=tmp / "validation.parquet", out_json=tmp / "fidelity.json",
                                  out_csv=tmp / "fidelity.csv", settings=SETTINGS)
    return tmp, ids, result


class _Swapped(torch.nn.Module):
    """An MLP stand-in (a module swap, not a hook): the MLP at position 0, `replace` elsewhere."""

    def __init__(self, mlp, replace):
        super().__init__()
        self.mlp, self.replace = mlp, replace

    def forward(self, x):
        out = self.mlp(x)
        return torch.cat([out[:, :1], self.replace(x[:, 1:], out[:, 1:])], dim=1)


def reference_losses(model_dir, ids, replacements: dict) -> tuple[float, float, float]:
    """CE, KL from clean and top-1 agreement over predictions at positions 1..T-2."""
    model, _ = load_model(model_dir)
    with torch.no_grad():
        clean = F.log_softmax(model(ids).logits[:, 1:-1], -1)
        layers = model.model.layers
        originals = {layer: layers[layer].mlp for layer in replacements}
        for layer, replace in replacements.items():
            layers[layer].mlp = _Swapped(originals[layer], replace)
        variant = F.log_softmax(model(ids).logits[:, 1:-1], -1)
        for layer, mlp in originals.items():
            layers[layer].mlp = mlp
    targets = ids[:, 2:]
    ce = float(-variant.gather(-1, targets[..., None]).mean())
    kl = float((clean.exp() * (clean - variant)).sum(-1).mean())
    agree = float((variant.argmax(-1) == clean.argmax(-1)).float().mean())
    return ce, kl, agree


def test_spliced_losses_match_an_independent_module_swap(fidelity_setup, tiny_model_dir):
    tmp, ids, result = fidelity_setup
    splice_ids = ids[:SETTINGS.splice_windows]
    tcs = {layer: load_transcoder(tmp / "tc" / f"layer_{layer}.safetensors") for layer in (0, 1)}
    transcode = {layer: (lambda tc: lambda x, out: tc(x))(tc) for layer, tc in tcs.items()}
    zero = lambda x, out: torch.zeros_like(out)  # noqa: E731
    layer0 = result["layers"][0]
    clean_ce, _, _ = reference_losses(tiny_model_dir, splice_ids, {})
    assert layer0["ce_clean"] == pytest.approx(clean_ce, rel=1e-5)
    ce, kl, agree = reference_losses(tiny_model_dir, splice_ids, {0: transcode[0]})
    assert (layer0["ce_spliced"], layer0["kl_spliced"], layer0["top1_agreement"]) == pytest.approx(
        (ce, kl, agree), rel=1e-4, abs=1e-6)
    ce_ablated, kl_ablated, _ = reference_losses(tiny_model_dir, splice_ids, {0: zero})
    assert (layer0["ce_ablated"], layer0["kl_ablated"]) == pytest.approx((ce_ablated, kl_ablated), rel=1e-4)
    # (a random model barely needs its MLPs, so the ratio is checked on the reported losses)
    gap = layer0["ce_ablated"] - layer0["ce_clean"]
    assert layer0["loss_recovered"] == pytest.approx((layer0["ce_ablated"] - layer0["ce_spliced"]) / gap)
    # every layer at once: layer 1's transcoder reads the stream that layer 0's already changed
    ce_all, kl_all, _ = reference_losses(tiny_model_dir, splice_ids, transcode)
    overall = result["all_layers"]
    assert (overall["ce_spliced"], overall["kl_spliced"]) == pytest.approx((ce_all, kl_all), rel=1e-4, abs=1e-6)
    assert overall["ce_ablated"] == pytest.approx(reference_losses(tiny_model_dir, splice_ids,
                                                                   {0: zero, 1: zero})[0], rel=1e-4)
    assert overall["splice_tokens"] == SETTINGS.splice_windows * (ids.shape[1] - 2)


def test_reconstruction_statistics_against_known_transcoders(fidelity_setup, tiny_model_dir):
    tmp, ids, result = fidelity_setup
    mean_only = result["layers"][1]
    assert mean_only["fvu"] == pytest.approx(1.0, abs=1e-4)
    assert (mean_only["l0"], mean_only["dead_fraction"], mean_only["dense_fraction"]) == (0.0, 1.0, 0.0)
    assert mean_only["tokens"] == SETTINGS.windows * (ids.shape[1] - 1)
    # layer 0 recomputed directly: FVU over every evaluation token, and firing counts
    model, _ = load_model(tiny_model_dir)
    seen = []
    handle = model.model.layers[0].mlp.register_forward_hook(lambda m, i, o: seen.append((i[0][:, 1:], o[:, 1:])))
    with torch.no_grad():
        model(ids)
        handle.remove()
        x, y = (t.reshape(-1, t.shape[-1]) for t in seen[0])
        tc = load_transcoder(tmp / "tc" / "layer_0.safetensors")
        acts = tc.encode(x)
        fvu = float((y - tc(x)).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    frequency = (acts > 0).float().mean(0)
    row = result["layers"][0]
    assert row["fvu"] == pytest.approx(fvu, rel=1e-4)
    assert row["l0"] == pytest.approx(float((acts > 0).float().sum(-1).mean()))
    assert row["dead_fraction"] == pytest.approx(float((frequency == 0).float().mean()))
    assert row["dense_fraction"] == pytest.approx(float((frequency > 0.1).float().mean()))
    assert result["mean_fvu"] == pytest.approx((row["fvu"] + mean_only["fvu"]) / 2)
    assert result["complete"] is True


def test_fidelity_table_has_a_row_per_layer_and_one_for_all(fidelity_setup):
    tmp, _, result = fidelity_setup
    with open(tmp / "fidelity.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["layer"] for row in rows] == ["0", "1", "all"]
    assert float(rows[0]["ce_spliced"]) == pytest.approx(result["layers"][0]["ce_spliced"])
    assert np.isfinite([float(rows[2][key]) for key in ("fvu", "kl_spliced", "loss_recovered")]).all()


def test_missing_layer_is_named(fidelity_setup, tiny_model_dir):
    tmp, _, _ = fidelity_setup
    settings = EvaluateTranscodersSettings(layers=(0, 1, 2), device="cpu")
    with pytest.raises(TranscoderSetError, match=r"layer\(s\) \[2\]"):
        evaluate_transcoders(model_dir=tiny_model_dir, transcoder_set=tmp / "tc" / "config.yaml",
                             validation_split=tmp / "validation.parquet", out_json=tmp / "x.json",
                             out_csv=tmp / "x.csv", settings=settings)
    assert not (tmp / "x.json").exists()
