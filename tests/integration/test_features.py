"""collect_features / collect_neurons on the tiny model: schema, exactness, determinism, errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from circuitflow.config import CollectFeaturesSettings, CollectNeuronsSettings, TranscoderArchitecture
from circuitflow.config import PrepareDatasetSettings as DatasetSettings
from circuitflow.config import WriteTranscoderSetSettings
from circuitflow.data import prepare_dataset
from circuitflow.features import FeatureRequestError, cantor, collect_features, collect_neurons
from circuitflow.features.ids import FEATURES_PER_FOLDER, feature_file, feature_files
from circuitflow.features.render import logit_lens
from circuitflow.features.sources import TranscoderSource
from circuitflow.features.statistics import TopSlots, firing_events, topk_events
from circuitflow.io import write_json
from circuitflow.model import load_model, load_tokenizer, read_model_facts
from circuitflow.transcoders import (
    Transcoder,
    TranscoderSetError,
    load_transcoder,
    save_transcoder,
    write_transcoder_set,
)
from circuitflow.transcoders.replacement import PerLayerTranscoders

TOPK = TranscoderArchitecture(activation="topk", n_features=48, k=4, skip_connection=True)


def write_random_set(folder, model_dir, d_model, layers=(0, 1)):
    weights = {}
    for layer in layers:
        torch.manual_seed(layer)
        tc = Transcoder(d_model, TOPK)
        with torch.no_grad():
            for p in tc.parameters():
                p.normal_(0, 0.3)
        weights[layer] = folder / f"layer_{layer}.safetensors"
        save_transcoder(tc, layer, weights[layer])
    write_transcoder_set(model_dir=model_dir, weights=list(weights.values()), out_config=folder / "config.yaml",
                         settings=WriteTranscoderSetSettings(layers=tuple(layers), scan="./data/features"))
    return folder / "config.yaml"


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, tiny_model_dir, tiny_corpus):
    """Validation windows and a random TopK transcoder set (2 layers) for the tiny model."""
    tmp = tmp_path_factory.mktemp("features")
    settings = DatasetSettings(source=str(tiny_corpus), context_length=32, train_tokens=310,
                               validation_tokens=620, validation_fraction=0.3)
    prepare_dataset(model_dir=tiny_model_dir, out_train=tmp / "train.parquet",
                    out_validation=tmp / "validation.parquet", out_summary=tmp / "s.json", settings=settings)
    write_random_set(tmp / "tc", tiny_model_dir, read_model_facts(tiny_model_dir).d_model)
    return tmp


SETTINGS = CollectFeaturesSettings(layers=(0, 1), source_id="tiny-transcoders", batch_size=4, top_k=5,
                                   context_before=6, context_after=2, n_quantiles=2, examples_per_quantile=2,
                                   n_random=3, histogram_bins=10, seed=1, device="cpu")


def test_top_slots_keep_largest_per_group():
    slots = TopSlots(groups=2, slots=2, window=1)
    context = lambda idx: torch.zeros(len(idx), 1, dtype=torch.float16)  # noqa: E731
    group = torch.tensor([0, 0, 0, 1, 0])
    key = torch.tensor([1.0, 5.0, 3.0, 2.0, 4.0])
    slots.offer(group, key, key, torch.arange(5, dtype=torch.int32), torch.zeros(5, dtype=torch.int32), context)
    slots.flush()
    assert slots.keys.tolist() == [[5.0, 4.0], [2.0, -float("inf")]]
    assert slots.seq.tolist() == [[1, 4], [3, -1]]
    slots.offer(torch.tensor([1, 1, 0]), torch.tensor([7.0, 1.0, 4.5]), torch.tensor([7.0, 1.0, 4.5]),
                torch.tensor([9, 8, 7], dtype=torch.int32), torch.zeros(3, dtype=torch.int32), context)
    slots.flush()
    assert slots.keys.tolist() == [[5.0, 4.5], [7.0, 2.0]]


def test_top_slots_keep_the_earlier_of_equal_keys():
    slots = TopSlots(groups=1, slots=2, window=1)
    context = lambda idx: torch.zeros(len(idx), 1, dtype=torch.float16)  # noqa: E731
    for seq in range(4):  # one flush per offer: ties meet both in the slots and among pending entries
        key = torch.tensor([2.0, 2.0]) if seq == 3 else torch.tensor([1.0 + seq % 2])
        slots.offer(torch.zeros(len(key), dtype=torch.long), key, key, torch.full((len(key),), seq, dtype=torch.int32),
                    torch.arange(len(key), dtype=torch.int32), context)
        slots.flush()
    assert slots.keys.tolist() == [[2.0, 2.0]] and slots.seq.tolist() == [[1, 3]] and slots.pos.tolist() == [[0, 0]]


def test_topk_fast_path_matches_the_dense_activations(tiny_setup):
    replacement = PerLayerTranscoders({1: load_transcoder(tiny_setup / "tc" / "layer_1.safetensors").eval()})
    source = TranscoderSource(replacement, 1, "tiny")
    x = torch.randn(3, 7, replacement.transcoders[1].d_model)
    acts, top = source.encode_with_top(x)
    assert top is not None and torch.equal(acts, source.encode(x))
    acts[:, 0] = 0
    for got, expected in zip(topk_events(*top, from_position=1), firing_events(acts)):
        assert torch.equal(got, expected)


def test_collect_features_schema_and_exact_values(tiny_setup, tiny_model_dir):
    out = tiny_setup / "features"
    meta = collect_features(model_dir=tiny_model_dir, transcoder_set=tiny_setup / "tc" / "config.yaml",
                            validation_split=tiny_setup / "validation.parquet", out_dir=out,
                            out_metadata=tiny_setup / "feature_metadata.json", settings=SETTINGS)
    files = feature_files(out)
    assert all(len(list(p.parent.iterdir())) <= FEATURES_PER_FOLDER for p in files)
    assert len(files) == len(meta["features"]) == 96 - sum(meta["dead_features_per_layer"].values())
    assert meta["total_tokens"] == 620 and sum(meta["tokens_per_domain"].values()) == 620

    model, tokenizer = load_model(tiny_model_dir)
    windows = pq.read_table(tiny_setup / "validation.parquet")
    tokens = torch.tensor(windows.column("tokens").to_pylist())
    with torch.no_grad():  # reference activations of layer 1, computed directly
        captured = {}
        handle = model.model.layers[1].mlp.register_forward_pre_hook(lambda m, i: captured.setdefault("x", i[0]))
        model(tokens)
        handle.remove()
        acts = load_transcoder(tiny_setup / "tc" / "layer_1.safetensors").encode(captured["x"])
        acts[:, 0] = 0

    entry = max((f for f in meta["features"] if f["layer"] == 1), key=lambda f: f["activation_count"])
    data = json.loads(feature_file(out, entry["cantor_id"]).read_text())
    feature = entry["feature"]
    assert data["index"] == cantor(1, feature) and data["layer"] == 1 and data["transcoder_id"] == "tiny-transcoders/1"
    column = acts[..., feature]
    assert data["activation_count"] == int((column > 0).sum())
    assert data["activation_frequency"] == pytest.approx(int((column > 0).sum()) / 620)
    assert data["act_max"] == pytest.approx(float(column.max()), rel=1e-5)
    names = [g["quantile_name"] for g in data["examples_quantiles"]]
    assert names[0] == "Top activations" and names[-1] == "Random samples"
    top = data["examples_quantiles"][0]["examples"]
    peaks = [ex["tokens_acts_list"][ex["train_token_ind"]] for ex in top]
    assert peaks == sorted(peaks, reverse=True) and peaks[0] == pytest.approx(float(column.max()), abs=1e-3)
    top_windows = {(tuple(ex["tokens"]), ex["train_token_ind"]) for ex in top}
    for group in data["examples_quantiles"][1:-1]:  # quantile groups do not repeat top examples
        assert not top_windows & {(tuple(ex["tokens"]), ex["train_token_ind"]) for ex in group["examples"]}
    for group in data["examples_quantiles"]:
        for ex in group["examples"]:
            assert len(ex["tokens"]) == len(ex["tokens_acts_list"]) <= 9
            assert 0 <= ex["train_token_ind"] < len(ex["tokens"])
            assert ex["tokens_acts_list"][ex["train_token_ind"]] > 0
    # the top example's tokens are those of the window where the maximum occurs
    flat = (column == column.max()).nonzero()[0]
    row, pos = int(flat[0]), int(flat[1])
    expected = [tokenizer.decode([int(t)]) for t in tokens[row, max(0, pos - 6):pos + 3]]
    assert top[0]["tokens"] == expected
    assert len(data["quantile_values"]) == 100 and data["quantile_values"] == sorted(data["quantile_values"])
    positive = column[column > 0]
    assert data["quantile_values"][49] == pytest.approx(float(positive.median()), rel=0.1)
    assert sum(data["histogram"]) == data["activation_count"] and len(data["histogram"]) == 10
    assert len(data["top_logits"]) == 10 and len(data["top_logits_values"]) == 10
    assert data["top_logits_values"] == sorted(data["top_logits_values"], reverse=True)


def test_logit_lens_applies_final_norm_gain(tiny_model_dir):
    model, _ = load_model(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight.copy_(torch.linspace(0.1, 2.0, 64))
    directions = torch.randn(3, 64)
    top_values, top_ids, bottom_values, _ = logit_lens(model, directions, 5)
    expected = (directions * model.model.norm.weight) @ model.lm_head.weight.T
    assert torch.allclose(top_values, expected.topk(5, dim=-1).values, atol=1e-5)
    assert torch.equal(top_ids, expected.topk(5, dim=-1).indices)
    assert torch.all(bottom_values[:, 0] == expected.min(-1).values)


def test_collection_is_deterministic(tiny_setup, tiny_model_dir):
    outs = []
    for name in ("a", "b"):
        collect_features(model_dir=tiny_model_dir, transcoder_set=tiny_setup / "tc" / "config.yaml",
                         validation_split=tiny_setup / "validation.parquet", out_dir=tiny_setup / name,
                         out_metadata=tiny_setup / f"{name}.json", settings=SETTINGS)
        outs.append({p.name: p.read_bytes() for p in feature_files(tiny_setup / name)})
    assert outs[0] == outs[1]


def test_neuron_baseline(tiny_setup, tiny_model_dir):
    settings = CollectNeuronsSettings(**{**dataclasses.asdict(SETTINGS), "source_id": "tiny-neurons"}, n_per_layer=16)
    meta = collect_neurons(model_dir=tiny_model_dir, validation_split=tiny_setup / "validation.parquet",
                           out_dir=tiny_setup / "neurons", out_metadata=tiny_setup / "neurons.json", settings=settings)
    features = meta["features"]
    assert meta["kind"] == "neuron" and {f["layer"] for f in features} == {0, 1}
    model, _ = load_model(tiny_model_dir)
    d_mlp = model.config.intermediate_size
    # the files are the live neurons of the seeded sample of 16 per layer
    sample = np.sort(np.random.default_rng([settings.seed, 0]).choice(d_mlp, size=16, replace=False))
    per_layer = [f for f in features if f["layer"] == 0]
    assert {f["feature"] for f in per_layer} <= set(sample.tolist())
    assert len(per_layer) + meta["dead_features_per_layer"]["0"] == 16
    data = json.loads(feature_file(tiny_setup / "neurons", per_layer[0]["cantor_id"]).read_text())
    assert data["is_neuron"] and data["index"] == cantor(0, data["feature"])
    directions = model.model.layers[0].mlp.down_proj.weight.T[data["feature"]][None]
    _, ids, _, _ = logit_lens(model, directions, 10)
    tokenizer = load_tokenizer(tiny_model_dir)
    assert data["top_logits"] == [tokenizer.decode([int(i)]) for i in ids[0]]


def test_layer_subset_keeps_layer_numbers(tiny_setup, tiny_model_dir, tmp_path):
    """A set with layer 1 only: its features are layer 1's, ids and files included."""
    config = write_random_set(tmp_path / "tc", tiny_model_dir, read_model_facts(tiny_model_dir).d_model, layers=(1,))
    meta = collect_features(model_dir=tiny_model_dir, transcoder_set=config,
                            validation_split=tiny_setup / "validation.parquet", out_dir=tmp_path / "f",
                            out_metadata=tmp_path / "m.json", settings=dataclasses.replace(SETTINGS, layers=(1,)))
    assert {f["layer"] for f in meta["features"]} == {1} and list(meta["dead_features_per_layer"]) == ["1"]
    collect_features(model_dir=tiny_model_dir, transcoder_set=tiny_setup / "tc" / "config.yaml",
                     validation_split=tiny_setup / "validation.parquet", out_dir=tmp_path / "full",
                     out_metadata=tmp_path / "full.json", settings=SETTINGS)
    cantor_id = meta["features"][0]["cantor_id"]
    subset, full = (json.loads(feature_file(tmp_path / folder, cantor_id).read_text()) for folder in ("f", "full"))
    assert subset["layer"] == 1 and subset["transcoder_id"] == "tiny-transcoders/1"
    # same weights as layer 1 of the full set: the same feature (the seeded samples draw from one
    # generator across layers, so only the sampled example groups may differ)
    assert {k: v for k, v in subset.items() if k != "examples_quantiles"} == \
        {k: v for k, v in full.items() if k != "examples_quantiles"}
    assert subset["examples_quantiles"][0] == full["examples_quantiles"][0]  # top activations


def test_bad_requests_are_explained(tiny_setup, tiny_model_dir, tmp_path):
    with pytest.raises(TranscoderSetError, match=r"layer\(s\) \[5\], but .* has them for layers \[0, 1\] only"):
        collect_features(model_dir=tiny_model_dir, transcoder_set=tiny_setup / "tc" / "config.yaml",
                         validation_split=tiny_setup / "validation.parquet", out_dir=tmp_path / "f",
                         out_metadata=tmp_path / "m.json", settings=dataclasses.replace(SETTINGS, layers=(0, 5)))
    other_model = tmp_path / "other-model"
    write_json(other_model / "config.json", {"num_hidden_layers": 2, "hidden_size": 32})
    wrong = write_random_set(tmp_path / "wrong", other_model, 32)
    with pytest.raises(FeatureRequestError, match="d_model 32, but the model .* has d_model 64"):
        collect_features(model_dir=tiny_model_dir, transcoder_set=wrong,
                         validation_split=tiny_setup / "validation.parquet", out_dir=tmp_path / "f",
                         out_metadata=tmp_path / "m.json", settings=SETTINGS)
    assert not (tmp_path / "f").exists()
