"""circuit-tracer's packed feature binary: Cantor ids, round trip, byte layout, determinism, errors."""

from __future__ import annotations

import gzip
import json
import os
import random
import struct
from pathlib import Path

import pytest

from circuitflow.features import PackError, cantor, cantor_unpair, read_packed_feature
from circuitflow.features import pack_feature_folder as pack_folder
from circuitflow.features.ids import feature_files

from ..conftest import placed

N_LAYERS, N_FEATURES = 3, 50
LAYERS = list(range(N_LAYERS))
TOKENS = [
    "café", "→", " Wait", "日本語", "\n\n", "<｜begin▁of▁sentence｜>", '"quoted"', "\\x0a", "🙂",
]


@pytest.mark.parametrize(
    ("layer", "feature", "z"),
    [(23, 86, 6081), (5, 3282, 5407110), (4, 27, 523), (0, 0, 0), (27, 8191, 33780062)],
)
def test_cantor_worked_values(layer, feature, z):
    assert cantor(layer, feature) == z
    assert cantor_unpair(z) == (layer, feature)


def test_cantor_round_trip():
    ids = {cantor(layer, feature) for layer in range(40) for feature in range(300)}
    assert len(ids) == 40 * 300  # injective on the grid
    for layer in range(40):
        for feature in range(300):
            assert cantor_unpair(cantor(layer, feature)) == (layer, feature)
    assert [cantor(*cantor_unpair(z)) for z in range(5000)] == list(range(5000))
    big = (10**30, 7 * 10**29)  # exact where float sqrt would not be
    assert cantor_unpair(cantor(*big)) == big


def feature_json(layer: int, feature: int, rng: random.Random) -> dict:
    examples = []
    for _ in range(rng.randint(0, 4)):
        n = rng.randint(1, 12)
        acts = [round(rng.uniform(0, 8), 4) for _ in range(n)]
        examples.append(
            {
                "tokens": [rng.choice(TOKENS) for _ in range(n)],
                "tokens_acts_list": acts,
                "train_token_ind": acts.index(max(acts)),
                "is_repeated_datapoint": rng.random() < 0.2,
            }
        )
    return {
        "top_logits": rng.sample(TOKENS, 4),
        "bottom_logits": rng.sample(TOKENS, 3),
        "act_min": 0.0,
        "act_max": max((max(e["tokens_acts_list"]) for e in examples), default=1.0),
        "examples_quantiles": [
            {"quantile_name": "Top activations", "examples": examples},
            {"quantile_name": "Random samples", "examples": examples[:1]},
        ],
        "activation_frequency": rng.random() * 1e-3,
        "layer": layer,
        "feature": feature,
    }


@pytest.fixture()
def features(tmp_path) -> Path:
    """About half of 3 x 50 features present, written with varied formatting."""
    folder = tmp_path / "features"
    folder.mkdir()
    rng = random.Random(0)
    for layer in range(N_LAYERS):
        for feature in range(N_FEATURES):
            if rng.random() < 0.5:
                obj = feature_json(layer, feature, rng)
                text = json.dumps(obj, indent=rng.choice([None, 1, 2]), ensure_ascii=rng.random() < 0.5)
                placed(folder, cantor(layer, feature)).write_text(text, encoding="utf-8")
    # The last feature of the last layer, so the final offsets end at a live entry.
    last = placed(folder, cantor(N_LAYERS - 1, N_FEATURES - 1))
    last.write_text(json.dumps(feature_json(N_LAYERS - 1, N_FEATURES - 1, rng)), encoding="utf-8")
    return folder


def load_index(packed: Path) -> dict:
    return json.loads(gzip.decompress((packed / "index.json.gz").read_bytes()))


def test_pack_round_trip(features, tmp_path):
    packed = tmp_path / "packed"
    summary = pack_folder(features, packed, LAYERS, N_FEATURES)

    files = feature_files(features)
    assert summary["n_packed"] == len(files)
    assert summary["json_bytes"] == sum(p.stat().st_size for p in files)
    assert summary["layer_bytes"] == [(packed / f"layer_{i}.bin").stat().st_size for i in range(N_LAYERS)]
    assert summary["packed_bytes"] == sum(p.stat().st_size for p in packed.iterdir())
    expected = ["index.json.gz"] + [f"layer_{i}.bin" for i in range(N_LAYERS)]
    assert sorted(p.name for p in packed.iterdir()) == expected

    index = load_index(packed)
    assert list(index) == ["version", "format", "0", "1", "2"]
    assert (index["version"], index["format"]) == ("1.0", "variable_chunks")
    for layer in range(N_LAYERS):
        offsets = index[str(layer)]["offsets"]
        assert index[str(layer)]["filename"] == f"layer_{layer}.bin"
        assert len(offsets) == N_FEATURES + 1 and offsets[0] == 0
        assert offsets == sorted(offsets)
        assert offsets[-1] == (packed / f"layer_{layer}.bin").stat().st_size
        for feature in range(N_FEATURES):
            live = placed(features, cantor(layer, feature)).exists()
            assert (offsets[feature + 1] > offsets[feature]) == live

    rng = random.Random(1)
    pairs = [(rng.randrange(N_LAYERS), rng.randrange(N_FEATURES)) for _ in range(30)]
    n_live = 0
    for layer, feature in pairs:
        source = placed(features, cantor(layer, feature))
        decoded = read_packed_feature(packed, layer, feature)
        if source.exists():
            n_live += 1
            assert decoded == json.loads(source.read_text(encoding="utf-8"))
        else:
            assert decoded is None
    assert 0 < n_live < len(pairs)  # both live and dead features were exercised
    # Non-ASCII tokens survive the round trip (they are packed as raw UTF-8, not \u escapes).
    with_cafe = [p for p in files if "café" in json.loads(p.read_text(encoding="utf-8"))["top_logits"]]
    assert with_cafe
    for path in with_cafe:
        decoded = read_packed_feature(packed, *cantor_unpair(int(path.stem)))
        assert "café" in decoded["top_logits"]

    with pytest.raises(PackError):
        read_packed_feature(packed, 0, N_FEATURES)
    with pytest.raises(PackError):
        read_packed_feature(packed, N_LAYERS, 0)


def test_entry_byte_layout(features, tmp_path):
    packed = tmp_path / "packed"
    pack_folder(features, packed, LAYERS, N_FEATURES)
    offsets = load_index(packed)["0"]["offsets"]
    feature = next(f for f in range(N_FEATURES) if offsets[f + 1] > offsets[f])
    start, end = offsets[feature], offsets[feature + 1]
    entry = (packed / "layer_0.bin").read_bytes()[start:end]

    (length,) = struct.unpack("<I", entry[:4])
    assert length == len(entry) - 4  # the length prefix covers exactly the gzip member
    assert entry[4:6] == b"\x1f\x8b" and entry[6] == 8  # gzip magic, deflate
    assert entry[7] & 0x08 == 0  # FNAME flag clear: no file name in the header
    assert entry[8:12] == b"\0\0\0\0"  # mtime 0
    payload = gzip.decompress(entry[4:])
    source = json.loads(placed(features, cantor(0, feature)).read_text(encoding="utf-8"))
    assert payload == json.dumps(source, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def test_pack_is_byte_reproducible(features, tmp_path):
    first, second, third = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    pack_folder(features, first, LAYERS, N_FEATURES)
    pack_folder(features, second, LAYERS, N_FEATURES)

    # Same content, different formatting and mtimes.
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in feature_files(features):
        obj = json.loads(path.read_text(encoding="utf-8"))
        target = placed(copy, int(path.stem))
        target.write_text(json.dumps(obj, indent=4, ensure_ascii=True) + "\n", encoding="utf-8")
        os.utime(target, (1_000_000, 1_000_000))
    pack_folder(copy, third, LAYERS, N_FEATURES)

    names = ["index.json.gz"] + [f"layer_{i}.bin" for i in range(N_LAYERS)]
    for name in names:
        reference = (first / name).read_bytes()
        assert (second / name).read_bytes() == reference, name
        assert (third / name).read_bytes() == reference, name


def test_existing_output_is_replaced(features, tmp_path):
    packed = tmp_path / "packed"
    packed.mkdir()
    (packed / "stale.txt").write_text("old")
    pack_folder(features, packed, LAYERS, N_FEATURES)
    assert not (packed / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if ".partial" in p.name] == []


def test_malformed_json_is_rejected(features, tmp_path):
    bad = placed(features, cantor(1, 7))
    bad.write_text("", encoding="utf-8")
    packed = tmp_path / "packed"
    with pytest.raises(PackError, match=rf"{bad.name} is not valid JSON: Expecting value"):
        pack_folder(features, packed, LAYERS, N_FEATURES)
    assert not packed.exists()
    assert [p.name for p in tmp_path.iterdir() if ".partial" in p.name] == []


def test_failed_pack_keeps_previous_output(features, tmp_path):
    packed = tmp_path / "packed"
    pack_folder(features, packed, LAYERS, N_FEATURES)
    before = {p.name: p.read_bytes() for p in packed.iterdir()}
    placed(features, cantor(2, 3)).write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(PackError, match=r"must hold a JSON object"):
        pack_folder(features, packed, LAYERS, N_FEATURES)
    assert {p.name: p.read_bytes() for p in packed.iterdir()} == before


def test_layer_mismatch_is_rejected(features, tmp_path):
    name = f"{cantor(0, 4)}.json"
    placed(features, cantor(0, 4)).write_text(json.dumps({"layer": 1, "feature": 4}), encoding="utf-8")
    with pytest.raises(PackError, match=rf"{name}: 'layer' is 1 but its name"):
        pack_folder(features, tmp_path / "packed", LAYERS, N_FEATURES)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"feature": 4}, "has no 'layer' key"),
        ({"layer": 0, "feature": "4"}, "'feature' must be an integer"),
        ({"layer": False, "feature": 4}, "'layer' must be an integer"),
    ],
)
def test_bad_identity_keys_are_rejected(features, tmp_path, content, message):
    placed(features, cantor(0, 4)).write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(PackError, match=message):
        pack_folder(features, tmp_path / "packed", LAYERS, N_FEATURES)


def test_non_finite_number_is_rejected(features, tmp_path):
    name = f"{cantor(0, 4)}.json"
    placed(features, cantor(0, 4)).write_text('{"layer": 0, "feature": 4, "act_max": NaN}', encoding="utf-8")
    with pytest.raises(PackError, match=rf"{name} is not valid JSON: non-finite number NaN"):
        pack_folder(features, tmp_path / "packed", LAYERS, N_FEATURES)


def test_feature_out_of_range_is_rejected(features, tmp_path):
    name = f"{cantor(0, N_FEATURES)}.json"
    placed(features, cantor(0, N_FEATURES)).write_text(json.dumps({"layer": 0, "feature": N_FEATURES}), encoding="utf-8")
    with pytest.raises(PackError, match=rf"{name} is \(layer 0, feature {N_FEATURES}\), outside"):
        pack_folder(features, tmp_path / "packed", LAYERS, N_FEATURES)
    assert not (tmp_path / "packed").exists()


def test_layer_out_of_range_is_rejected(features, tmp_path):
    name = f"{cantor(N_LAYERS, 0)}.json"
    placed(features, cantor(N_LAYERS, 0)).write_text(json.dumps({"layer": N_LAYERS, "feature": 0}), encoding="utf-8")
    with pytest.raises(PackError, match=rf"{name} is \(layer {N_LAYERS}, feature 0\)"):
        pack_folder(features, tmp_path / "packed", LAYERS, N_FEATURES)


def test_a_feature_file_outside_its_folder_is_rejected(features, tmp_path):
    name = f"{cantor(1, 7)}.json"
    placed(features, cantor(1, 7)).replace(features / name)  # flat, as before the layout
    with pytest.raises(PackError, match=rf"{name} is not where collect_features puts it"):
        pack_folder(features, tmp_path / "packed", LAYERS, N_FEATURES)


@pytest.mark.parametrize("name", ["feature_metadata.json", "0523.json", "-1.json", "12.json.bak"])
def test_unexpected_file_name_is_rejected(features, tmp_path, name):
    (features / name).write_text("{}", encoding="utf-8")
    with pytest.raises(PackError, match=rf"{name}: unexpected file"):
        pack_folder(features, tmp_path / "packed", LAYERS, N_FEATURES)


def test_hidden_files_are_ignored(features, tmp_path):
    """Snakemake writes .snakemake_timestamp into directory outputs such as the feature folder."""
    reference = pack_folder(features, tmp_path / "reference", LAYERS, N_FEATURES)
    (features / ".snakemake_timestamp").write_text("")
    again = pack_folder(features, tmp_path / "again", LAYERS, N_FEATURES)
    assert again == reference


def test_layer_subset_keeps_real_layer_numbers(tmp_path):
    """A set of layers [1, 3]: index keys, file names and ids all use the real layer numbers."""
    rng = random.Random(7)
    folder = tmp_path / "subset"
    folder.mkdir()
    live = [(1, 4), (3, 0), (3, 9)]
    for layer, feature in live:
        placed(folder, cantor(layer, feature)).write_text(json.dumps(feature_json(layer, feature, rng)))
    packed = tmp_path / "packed"
    summary = pack_folder(folder, packed, [3, 1], 10)
    assert summary["layers"] == [1, 3] and summary["n_packed"] == 3
    assert sorted(p.name for p in packed.iterdir()) == ["index.json.gz", "layer_1.bin", "layer_3.bin"]
    index = json.loads(gzip.decompress((packed / "index.json.gz").read_bytes()))
    assert [k for k in index if k not in ("version", "format")] == ["1", "3"]
    for layer, feature in live:
        assert read_packed_feature(packed, layer, feature) == json.loads(placed(folder, cantor(layer, feature)).read_text())
    assert read_packed_feature(packed, 3, 5) is None
    with pytest.raises(PackError, match="has no layer 0"):
        read_packed_feature(packed, 0, 0)
    placed(folder, cantor(2, 0)).write_text(json.dumps(feature_json(2, 0, rng)))
    with pytest.raises(PackError, match=r"is \(layer 2, feature 0\), outside layers \[1, 3\]"):
        pack_folder(folder, tmp_path / "again", [1, 3], 10)
