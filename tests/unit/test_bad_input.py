"""Bad input gets one clear error naming the offender, and never a trusted half-output."""

from __future__ import annotations

import json
import os

import pytest

from circuitflow.attribution.graphs import GraphFolderError, assemble_graphs
from circuitflow.config import PrepareDatasetSettings
from circuitflow.data.dataset import DatasetError, read_records
from circuitflow.data.prompts import PromptError, read_prompt_text
from circuitflow.features import cantor
from circuitflow.io import atomic_path, write_json
from circuitflow.model import ModelSourceError, read_model_facts

from ..conftest import placed


def test_non_utf8_prompt_file_is_named(tmp_path):
    prompt = tmp_path / "latin1.txt"
    prompt.write_bytes("Caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(PromptError, match=r"prompt file .*latin1.txt is not UTF-8 text"):
        read_prompt_text(str(prompt))


def test_jsonl_line_that_is_not_an_object_is_named(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "fine"}\n7\n')
    with pytest.raises(DatasetError, match=r"corpus.jsonl: line 2 is a JSON int, not an object"):
        read_records(PrepareDatasetSettings(source=str(corpus)))


def test_non_utf8_corpus_is_named(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"caf\xe9\n\nmore")
    with pytest.raises(DatasetError, match=r"corpus.txt' is not UTF-8 text"):
        read_records(PrepareDatasetSettings(source=str(corpus)))


def test_truncated_archive_is_named(tmp_path):
    import lzma

    corpus = tmp_path / "corpus.jsonl.xz"
    data = lzma.compress(("".join(f'{{"text": "record {i}"}}\n' for i in range(2000))).encode())
    corpus.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"corpus.jsonl.xz' cannot be read"):
        read_records(PrepareDatasetSettings(source=str(corpus)))


def test_model_config_without_layer_count_names_the_file(tmp_path):
    write_json(tmp_path / "config.json", {"hidden_size": 8})
    with pytest.raises(ModelSourceError, match=r"config.json has no layer count .*model.n_layers"):
        read_model_facts(tmp_path)


def test_stale_partials_of_an_output_are_removed(tmp_path):
    """kill -9 leaves `.<name>.partial-<pid>` behind; the next job writing <name> removes it."""
    final = tmp_path / "layer_0.parquet"
    stale = [tmp_path / ".layer_0.parquet.partial-12345", tmp_path / ".layer_0.parquet.partial-999"]
    for path in stale:
        path.write_bytes(b"x" * 1000)
    (tmp_path / ".partial-dir").mkdir()
    other = tmp_path / ".layer_1.parquet.partial-12345"  # another output's partial: not ours to touch
    other.write_bytes(b"y")
    with atomic_path(final) as tmp:
        assert not any(p.exists() for p in stale)
        tmp.write_text("done")
    assert final.read_text() == "done" and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".layer_1.parquet.partial-12345", ".partial-dir",
                                                          "layer_0.parquet"]


def write_graph_inputs(folder, feature_text: str | None = None):
    """One graph with two feature nodes, its metadata and scores, and their feature files."""
    folder.mkdir()
    nodes = [{"node_id": f"{layer}_{feature}_1", "feature": cantor(layer, feature), "layer": str(layer),
              "feature_type": "cross layer transcoder"} for layer, feature in ((0, 3), (1, 2))]
    (folder / "g.json").write_text(json.dumps({"metadata": {"slug": "g"}, "nodes": nodes, "links": []}))
    (folder / "g.metadata.json").write_text(json.dumps({"slug": "g"}))
    (folder / "g.scores.json").write_text(json.dumps({"slug": "g", "replacement_score": 0.5}))
    features = folder / "features"
    features.mkdir()
    for layer, feature in ((0, 3), (1, 2)):
        placed(features, cantor(layer, feature)).write_text(json.dumps({"layer": layer, "feature": feature}))
    if feature_text is not None:
        placed(features, cantor(1, 2)).write_text(feature_text)
    return [folder / "g.json"], [folder / "g.metadata.json"], [folder / "g.scores.json"], features


def test_graph_folder_holds_checked_copies(tmp_path):
    graphs, metadata, scores, features = write_graph_inputs(tmp_path / "in")
    out = tmp_path / "graphs"
    summary = assemble_graphs(slugs=["g"], graphs=graphs, metadata=metadata, scores=scores, feature_dir=features,
                              out_dir=out)
    assert summary["features"] == 2
    published = out / "features" / f"{cantor(1, 2)}.json"
    source = placed(features, cantor(1, 2))
    assert os.stat(published).st_ino != os.stat(source).st_ino  # a copy, not a hard link
    source.write_text('{"layer": 1, "feature": 2, "changed": true}')
    assert "changed" not in published.read_text()


def test_graph_nodes_carry_explanations_categories_and_scores(tmp_path):
    graphs, metadata, scores, features = write_graph_inputs(tmp_path / "in")
    explained, classified, scored = (tmp_path / name for name in ("autointerp.json", "classes.json", "scores.json"))
    explained.write_text(json.dumps({"features": [{"cantor_id": cantor(0, 3), "description": "commas in lists"}]}))
    classified.write_text(json.dumps({"features": [{"cantor_id": cantor(0, 3), "category": "language",
                                                    "confidence": "high"}]}))
    scored.write_text(json.dumps({"features": [{"cantor_id": cantor(0, 3), "scores": {
        "llm": {"detection": {"balanced_accuracy": 0.75}, "fuzzing": {"balanced_accuracy": 0.5}},
        "trivial": {"detection": {"balanced_accuracy": 0.625}}}}]}))
    summary = assemble_graphs(slugs=["g"], graphs=graphs, metadata=metadata, scores=scores, feature_dir=features,
                              out_dir=tmp_path / "graphs", explanations=explained, classifications=classified,
                              feature_scores=scored)
    assert summary["labels"] == {"llm": 1, "trivial": 1}
    nodes = {n["feature"]: n for n in json.loads((tmp_path / "graphs" / "g.json").read_text())["nodes"]}
    assert nodes[cantor(0, 3)]["clerp"] == "commas in lists [detection 0.75]"
    assert nodes[cantor(1, 2)]["clerp"] == "Fires rarely."  # no LLM explanation, no examples: the trivial one
    labelled = json.loads((tmp_path / "graphs" / "features" / f"{cantor(0, 3)}.json").read_text())
    assert labelled == {"layer": 0, "feature": 3, "explanation": "commas in lists", "explanation_source": "llm",
                        "label_rule": "LLM explanation beat the token label: detection 0.750 vs token label 0.625 "
                                      "on the same snippets",
                        "token_label": "Fires rarely.", "token_label_output_centric": False,
                        "llm_explanation": "commas in lists", "llm_detection_score": 0.75,
                        "token_label_detection_score": 0.625,
                        "category": "language", "category_confidence": "high", "detection_score": 0.75,
                        "fuzzing_score": 0.5}


@pytest.mark.parametrize("text,message", [
    ('{"layer": 1, "feat', "is not valid JSON"),
    ('{"layer": 1, "feature": 5}', "'feature' is 5 but its name"),
])
def test_truncated_or_wrong_feature_file_is_not_published(tmp_path, text, message):
    graphs, metadata, scores, features = write_graph_inputs(tmp_path / "in", feature_text=text)
    out = tmp_path / "graphs"
    with pytest.raises(GraphFolderError, match=rf"{cantor(1, 2)}.json.*{message}.*rerun collect_features"):
        assemble_graphs(slugs=["g"], graphs=graphs, metadata=metadata, scores=scores, feature_dir=features, out_dir=out)
    assert not out.exists()


def test_truncated_graph_is_not_published(tmp_path):
    graphs, metadata, scores, features = write_graph_inputs(tmp_path / "in")
    (tmp_path / "in" / "g.json").write_text('{"nodes": [')
    with pytest.raises(GraphFolderError, match=r"graph .*g.json is not a circuit-tracer graph"):
        assemble_graphs(slugs=["g"], graphs=graphs, metadata=metadata, scores=scores, feature_dir=features,
                        out_dir=tmp_path / "graphs")
    assert not (tmp_path / "graphs").exists()
