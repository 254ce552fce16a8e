"""benchmarks/compare_runs.py on two small result trees: timings and the run folder's path are
left out, the graph folders' move into results/<run>/ (with results/graphs/ left as a folder of
relative links) is recognised, and a changed value, a missing link or a stray file is reported.
Also circuitflow.io.drop_timings, the timing keys it and the SLURM test leave out."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from circuitflow.io import TIMING_KEYS, drop_timings

ROOT = Path(__file__).resolve().parents[2]
RUN = "tiny"


def load_compare_runs():
    spec = importlib.util.spec_from_file_location("compare_runs", ROOT / "benchmarks" / "compare_runs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


compare_runs = load_compare_runs()


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, pa.Table):
        pq.write_table(data, path)
    else:
        path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def graph(slug: str, scan: str = "./data/features") -> dict:
    return {"metadata": {"slug": slug, "scan": scan, "transcoder_list": []},
            "nodes": [{"node_id": "1_2_3", "feature": 12, "feature_type": "cross layer transcoder",
                       "clerp": "capital cities"}], "links": []}


def graph_files(folder: Path, slug: str = "france", prompts: str = "results/graphs") -> None:
    """A graph folder as assemble_graphs writes it, plus a hub copy. `prompts` is a path text
    that names the graph folder (none of ours does today; the comparison allows for it)."""
    write(folder / "graphs" / f"{slug}.json", graph(slug))
    write(folder / "graphs" / "graph-metadata.json", {"graphs": [graph(slug)["metadata"]]})
    write(folder / "graphs" / "graph-scores.json", {slug: {"origin": f"{prompts}/{slug}.json", "seconds": 1.5}})
    write(folder / "graphs" / "features" / "12.json", {"index": 12, "examples": [[0.5, "Paris"]]})
    write(folder / "graphs-hub" / f"{slug}.json", graph(slug, scan="owner/name"))


def run_files(run: Path, root: Path, seconds: float) -> None:
    """Outputs inside results/<run>: a parquet, a manifest with timings and the run folder's
    absolute path, and a log (skipped)."""
    write(run / "dataset" / "train.parquet", pa.table({"token": [1, 2, 3], "doc": [0, 0, 1]}))
    write(run / "activations" / "manifest.json",
          {"n_tokens": 3, "seconds": seconds, "forward_seconds": seconds / 2, "tokens_per_second": 3 / seconds,
           "layers": {"0": {"shard": f"{root.resolve()}/results/{RUN}/activations/layer_0.parquet"}}})
    write(run / "logs" / "cache_activations.log", f"took {seconds} s\n")


@pytest.fixture
def trees(tmp_path):
    """BEFORE with results/graphs and results/graphs-hub beside the run folder; AFTER with both
    inside results/<run>/ and results/graphs/ a folder of relative links into it."""
    before, after = tmp_path / "before", tmp_path / "after"
    run_files(before / "results" / RUN, before, seconds=10.0)
    graph_files(before / "results")
    run_files(after / "results" / RUN, after, seconds=12.5)
    graph_files(after / "results" / RUN, prompts=f"results/{RUN}/graphs")
    links = after / "results" / "graphs"
    links.mkdir()
    for entry in sorted((after / "results" / RUN / "graphs").iterdir()):
        (links / entry.name).symlink_to(Path("..", RUN, "graphs", entry.name))
    # Snakemake's marker in each directory output: not an output, not linked
    for folder in (before / "results" / "graphs", after / "results" / RUN / "graphs", links):
        write(folder / ".snakemake_timestamp", "")
    return before, after


def compare(before: Path, after: Path, capsys) -> tuple[int, str]:
    code = compare_runs.main([str(before), str(after)])
    return code, capsys.readouterr().out


def test_relocated_graphs_and_timings_are_identical_outputs(trees, capsys):
    code, out = compare(*trees, capsys)
    assert code == 0, out
    assert out.splitlines()[-1] == "identical outputs"
    assert f"moved to results/{RUN}/ (the run results/graphs/ links into)" in out
    assert f"4  after: results/graphs/ link folder, links to results/{RUN}/graphs/" in out
    assert f"5  results/graphs/ compared with results/{RUN}/graphs/ (expected move)" in out  # and the marker
    assert f"1  results/graphs-hub/ compared with results/{RUN}/graphs-hub/ (expected move)" in out
    assert "1  json without timings, a path differs only by the graphs folders' move: same" in out
    assert "1  parquet (columns and values): same" in out
    assert "1  skipped (logs, benchmarks)" in out


def test_a_changed_value_is_reported(trees, capsys):
    before, after = trees
    changed = after / "results" / RUN / "graphs" / "features" / "12.json"
    changed.write_text(json.dumps({"index": 12, "examples": [[0.25, "Paris"]]}))
    write(after / "results" / RUN / "dataset" / "train.parquet", pa.table({"token": [1, 2, 4], "doc": [0, 0, 1]}))
    code, out = compare(before, after, capsys)
    assert code == 1
    assert f"DIFF  graphs/features/12.json (after: {RUN}/graphs/features/12.json): bytes differ" in out
    assert f"DIFF  {RUN}/dataset/train.parquet: rows or values differ" in out
    assert out.splitlines()[-1] == "2 difference(s)"


def test_a_path_that_moved_elsewhere_is_reported(trees, capsys):
    before, after = trees
    write(after / "results" / RUN / "graphs" / "graph-scores.json",
          {"france": {"origin": "results/other/graphs/france.json", "seconds": 2.0}})
    code, out = compare(before, after, capsys)
    assert code == 1 and "DIFF  graphs/graph-scores.json" in out and "results/other/graphs" in out


def test_link_folder_problems_are_reported(trees, capsys):
    before, after = trees
    links = after / "results" / "graphs"
    (links / "graph-scores.json").unlink()
    (links / "features").unlink()
    (links / "features").symlink_to(after / "results" / RUN / "graphs" / "features")  # absolute
    write(after / "results" / "graphs-hub" / "france.json", graph("france"))  # the old folder, left over
    code, out = compare(before, after, capsys)
    assert code == 1
    assert f"DIFF  after: results/{RUN}/graphs/graph-scores.json has no link in results/graphs/" in out
    assert "DIFF  after: results/graphs/features -> /" in out and "an absolute link" in out
    assert (f"DIFF  graphs-hub/france.json: a file (not a link) in the old folder beside results/{RUN}/graphs-hub/"
            in out)


def test_without_links_the_run_is_found_by_its_graphs(trees, capsys):
    """Two runs with graphs on the after side and no link folder: the one whose graphs are the
    before side's is compared, whatever the names' order."""
    before, after = trees
    for link in (after / "results" / "graphs").iterdir():
        link.unlink()
    (after / "results" / "graphs").rmdir()
    graph_files(after / "results" / "a-run", slug="genesis", prompts="results/a-run/graphs")
    run_files(after / "results" / "a-run", after, seconds=1.0)
    run_files(before / "results" / "a-run", before, seconds=2.0)
    code, out = compare(before, after, capsys)
    assert f"moved to results/{RUN}/ (of ['a-run', '{RUN}'], the run whose graphs match (0 of 6 files differ))" in out
    # a-run's graphs exist only after (before, results/graphs held the tiny run's)
    assert "DIFF  a-run/graphs/genesis.json: only in after" in out
    assert f"{RUN}/graphs" not in "".join(line for line in out.splitlines() if line.startswith("DIFF"))
    assert code == 1


def test_the_same_layout_on_both_sides_is_compared_directly(trees, capsys):
    _, after = trees
    code, out = compare(after, after, capsys)
    assert code == 0 and "moved to" not in out and "move" not in out
    assert "4  before: results/graphs/ link folder" in out


def test_drop_timings_removes_every_timing_key_at_any_depth():
    data = {"n_tokens": 3, "layers": [{"fvu": 0.1, "seconds": 2.0}],
            "seconds": {"attribution": 1.0, "graph_files": 0.5}, "usage": {"requests": 4, "wall_seconds": 9.0},
            "training_tokens_per_second": 10.0, "seconds_per_step": 0.1, "forward_seconds": 1.0,
            "tokens_per_second": 3.0}
    assert drop_timings(data) == {"n_tokens": 3, "layers": [{"fvu": 0.1}], "usage": {"requests": 4}}
    assert data["seconds"] == {"attribution": 1.0, "graph_files": 0.5}  # a copy: the input is kept
    assert {"seconds", "forward_seconds", "tokens_per_second", "training_tokens_per_second",
            "seconds_per_step", "wall_seconds"} == TIMING_KEYS


def test_timing_keys_are_what_the_library_writes():
    """Each timing key is a key some stage writes (a key nothing writes would hide nothing)."""
    library = ROOT / "src" / "circuitflow"
    sources = "\n".join(path.read_text(encoding="utf-8") for path in library.rglob("*.py")
                         if path != library / "io.py")  # where the keys are listed, not written
    for key in TIMING_KEYS:
        assert f'"{key}"' in sources or f"{key}:" in sources, key
