"""Compare the results/ folders of two runs of the same config: are the outputs the same?

    python benchmarks/compare_runs.py BEFORE_DIR AFTER_DIR

Each folder is a workflow directory holding ``results/``. Every output file is compared by
kind, and timings are left out (wall-clock figures differ between any two runs; the keys are
``circuitflow.io.TIMING_KEYS``):

- parquet: the same columns and values (the bytes differ once page checksums are written);
- packed ``.bin``/``.gz`` and per-feature/graph JSON: the bytes must be identical;
- other JSON (metrics, manifests, scores, summaries): equal after dropping timing keys and
  writing the run folder's own absolute path as ``<run dir>``;
- ``.safetensors``: the same tensor names with bitwise-equal values (the header may differ);
- a transcoder set ``config.yaml``: the same architecture, hooks, scan and layer -> file map.

Format changes made on purpose are recognised rather than reported, and listed as such: the
set config's positional ``transcoders`` list read as layer -> file, a metrics file's
``settings`` block split into ``training`` (metrics) and ``*.architecture.json``, and the
``graphs`` rule's log renamed.

The graph folders' move into the run folder is recognised too. When BEFORE has the old layout
(``results/graphs/`` and ``results/graphs-hub/`` beside the run folders) and AFTER has
``results/<run>/graphs/``, BEFORE's ``results/graphs/X`` is compared with AFTER's
``results/<run>/graphs/X`` and ``results/graphs-hub/X`` with ``results/<run>/graphs-hub/X``.
<run> is the run AFTER's ``results/graphs/`` links point into; without that link folder, the
only run folder holding a ``graphs/`` folder; among several, the one whose graph files match
BEFORE's best (a tie is reported, not guessed). On either side, the symlinks under
``results/graphs/`` (the default run's link folder) are not compared again: the folder is
counted, and each link checked (relative, resolving to the entry of the same name in
``results/<run>/graphs/``, one for every entry there). A text output that differs only because
it names ``results/<run>/graphs`` where BEFORE named ``results/graphs`` is counted as the same
but for the relocation.

Logs and Snakemake benchmarks are skipped. Prints one line per kind and every difference;
exits 1 if anything differs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from circuitflow.io import drop_timings

ARCHITECTURE_KEYS = ("activation", "n_features", "k", "skip_connection")
EXACT_JSON_PARTS = ("features/json", "neurons/json", "attribution", "graphs")
# Outputs that exist on one side only because of a deliberate rename or a new file.
EXPECTED_ONE_SIDED = (".architecture.json", "logs/", "benchmarks/", ".snakemake_timestamp")
# Folders that moved from results/ into results/<run>/; results/graphs/ stays as a folder of links.
GRAPH_FOLDERS = ("graphs", "graphs-hub")
LINK_FOLDER = "graphs"
RELOCATED = "a path differs only by the graphs folders' move"

Rewrite = Callable[[str], str]


@dataclass
class Side:
    """One workflow folder's outputs: regular files by path under results/ (links elsewhere are
    followed, as before), and the symlinks under results/graphs/, kept apart."""

    root: Path
    files: dict[str, Path]
    links: dict[str, Path] = field(default_factory=dict)

    @property
    def results(self) -> Path:
        return self.root / "results"


def tensors(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path))


def header_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        return handle.metadata() or {}


def set_layers(config: dict) -> dict[int, str]:
    if "layers" in config:
        return {int(k): v for k, v in config["layers"].items()}
    return dict(enumerate(config["transcoders"]))


def compare_set_config(a: Path, b: Path, rewrite: Rewrite | None = None) -> list[str]:
    ca = yaml.safe_load(a.read_text())
    cb = yaml.safe_load(rewrite(b.read_text()) if rewrite else b.read_text())
    keys = ("model_kind", "feature_input_hook", "feature_output_hook", "activation", "k", "d_model",
            "n_features", "skip_connection", "scan")
    diffs = [f"{k}: {ca.get(k)!r} != {cb.get(k)!r}" for k in keys if ca.get(k) != cb.get(k)]
    if set_layers(ca) != set_layers(cb):
        diffs.append(f"layers: {set_layers(ca)} != {set_layers(cb)}")
    return diffs


def normalise_metrics(data: dict, architecture: dict | None) -> dict:
    """Old metrics carried every transcoder knob under `settings`; new ones keep the training
    knobs under `training` and the architecture in `*.architecture.json`."""
    data = dict(data)
    settings = data.pop("settings", None)
    if settings is not None:
        data["architecture"] = {k: settings[k] for k in ARCHITECTURE_KEYS}
        data["training"] = {k: v for k, v in settings.items() if k not in ARCHITECTURE_KEYS}
    elif architecture is not None:
        data["architecture"] = {k: architecture[k] for k in ARCHITECTURE_KEYS}
    return data


def old_architecture(weights: Path) -> dict | None:
    """The architecture an old file kept in its safetensors header, or its new JSON."""
    new = weights.with_name(weights.name.removesuffix(".safetensors") + ".architecture.json")
    if new.is_file():
        return json.loads(new.read_text())
    meta = header_metadata(weights)
    if "activation" not in meta:
        return None
    return {"activation": meta["activation"], "n_features": int(meta["n_features"]), "k": int(meta["k"]),
            "d_model": int(meta["d_model"]), "layer": int(meta.get("layer", -1))}


def read_json(path: Path, root: Path, rewrite: Rewrite | None = None):
    """JSON with the run folder's own absolute path replaced (prompt origins name it), and
    `rewrite` applied to the text after that."""
    text = path.read_text().replace(str(root.resolve()), "<run dir>")
    return json.loads(rewrite(text) if rewrite else text)


def unrelocate(run: str) -> Rewrite:
    """Text of the new layout with results/<run>/graphs (and graphs-hub) named as before the move."""
    return lambda text: text.replace(f"results/{run}/graphs", "results/graphs")


def same_text(a: Path, b: Path, rewrite: Rewrite) -> bool:
    try:
        return a.read_text(encoding="utf-8") == rewrite(b.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return False


def compare_file(rel: str, a: Path, b: Path, roots: tuple[Path, Path],
                 rewrite: Rewrite | None = None) -> tuple[str, list[str]]:
    """(kind, differences) for one output present on both sides. `rewrite`, if given, maps the
    after side's text to the before side's naming; a file that is the same only with it is
    counted as such."""
    if rel.endswith(".safetensors"):
        ta, tb = tensors(a), tensors(b)
        diffs = [] if ta.keys() == tb.keys() else [f"tensor names {sorted(ta)} != {sorted(tb)}"]
        diffs += [f"tensor {k} differs" for k in sorted(set(ta) & set(tb))
                  if ta[k].shape != tb[k].shape or ta[k].tobytes() != tb[k].tobytes()]
        arch_a, arch_b = old_architecture(a), old_architecture(b)
        if arch_a and arch_b:
            diffs += [f"architecture {k}: {arch_a.get(k)} != {arch_b.get(k)}"
                      for k in ("activation", "n_features", "k", "d_model", "layer") if arch_a.get(k) != arch_b.get(k)]
        return "safetensors (tensors + architecture)", diffs
    if rel.endswith(".parquet"):
        import pyarrow.parquet as pq

        ta, tb = pq.read_table(a), pq.read_table(b)
        same = ta.schema.remove_metadata().equals(tb.schema.remove_metadata()) and ta.equals(tb)
        return "parquet (columns and values)", [] if same else ["rows or values differ"]
    if rel.endswith("transcoders/config.yaml"):
        diffs = compare_set_config(a, b)
        if diffs and rewrite and not compare_set_config(a, b, rewrite):
            return f"transcoder set config, {RELOCATED}", []
        return "transcoder set config", diffs
    exact = any(part in rel for part in EXACT_JSON_PARTS) and not rel.endswith("scores.json")
    if rel.endswith(".json") and not exact:
        diffs = compare_json(rel, a, b, roots)
        if diffs and rewrite and not compare_json(rel, a, b, roots, rewrite):
            return f"json without timings, {RELOCATED}", []
        return "json without timings", diffs
    same = a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
    if not same and rewrite and same_text(a, b, rewrite):
        return f"bytes, {RELOCATED}", []
    return "bytes", [] if same else ["bytes differ"]


def compare_json(rel: str, a: Path, b: Path, roots: tuple[Path, Path], rewrite: Rewrite | None = None) -> list[str]:
    ja = drop_timings(read_json(a, roots[0]))
    jb = drop_timings(read_json(b, roots[1], rewrite))
    if rel.endswith(".metrics.json"):
        weights_a = a.with_name(a.name.removesuffix(".metrics.json") + ".safetensors")
        weights_b = b.with_name(b.name.removesuffix(".metrics.json") + ".safetensors")
        ja = normalise_metrics(ja, old_architecture(weights_a) if weights_a.is_file() else None)
        jb = normalise_metrics(jb, old_architecture(weights_b) if weights_b.is_file() else None)
    if ja == jb:
        return []
    if not (isinstance(ja, dict) and isinstance(jb, dict)):
        return [f"{ja!r:.120} != {jb!r:.120}"]
    return [f"{key}: {ja.get(key)!r:.120} != {jb.get(key)!r:.120}"
            for key in sorted(set(ja) | set(jb)) if ja.get(key) != jb.get(key)]


def scan(root: Path) -> Side:
    """Every file under root/results, with the symlinks under results/graphs/ kept apart (a link
    to a folder there is one entry: its files are the run folder's own)."""
    results = root / "results"
    if not results.is_dir():
        sys.exit(f"compare_runs: {results} does not exist")
    side = Side(root, {})
    for folder, dirs, names in os.walk(results):  # does not descend into linked folders
        for name in dirs + names:
            path = Path(folder) / name
            rel = path.relative_to(results).as_posix()
            if path.is_symlink() and rel.startswith(f"{LINK_FOLDER}/"):
                side.links[rel] = path
            elif name in names and path.is_file():
                side.files[rel] = path
    side.files, side.links = dict(sorted(side.files.items())), dict(sorted(side.links.items()))
    return side


def snakemake_marker(rel: str) -> bool:
    """Snakemake's own file in a directory output (.snakemake_timestamp): no output of ours."""
    return rel.rsplit("/", 1)[-1].startswith(".snakemake")


def graph_runs(files: dict[str, Path]) -> list[str]:
    """Run folders holding a graphs/ or graphs-hub/ folder (the new layout)."""
    return sorted({parts[0] for parts in (rel.split("/") for rel in files)
                   if len(parts) > 2 and parts[1] in GRAPH_FOLDERS and parts[0] not in GRAPH_FOLDERS})


def old_graph_files(files: dict[str, Path]) -> list[str]:
    return [rel for rel in files if rel.split("/")[0] in GRAPH_FOLDERS]


def check_links(side: Side, name: str) -> tuple[str | None, list[str]]:
    """The run that `side`'s link folder results/graphs/ points into, and what is wrong with it:
    a link that is absolute, broken or not to results/<run>/graphs/<same name>, links into
    several runs, or an entry of results/<run>/graphs/ without its link."""
    results = side.results.resolve()
    runs: set[str] = set()
    problems = []
    for rel, link in side.links.items():
        target = os.readlink(link)
        where = f"{name}: results/{rel} -> {target}"
        if os.path.isabs(target):
            problems.append(f"{where}: an absolute link (the folder should hold relative links)")
        if not link.exists():
            problems.append(f"{where}: a broken link")
            continue
        try:
            parts = link.resolve().relative_to(results).parts
        except ValueError:
            parts = ()
        if len(parts) < 3 or parts[1] != "graphs" or parts[2:] != tuple(rel.split("/")[1:]):
            problems.append(f"{where}: not a link to results/<run>/graphs/{rel.split('/', 1)[1]}")
            continue
        runs.add(parts[0])
    if len(runs) > 1:
        problems.append(f"{name}: results/graphs/ links into several runs: {sorted(runs)}")
        return None, problems
    run = next(iter(runs), None)
    if run is not None:
        linked = {rel.split("/")[1] for rel in side.links}
        entries = {entry.name for entry in (side.results / run / "graphs").iterdir()
                   if not snakemake_marker(entry.name)}
        problems += [f"{name}: results/{run}/graphs/{entry} has no link in results/graphs/"
                     for entry in sorted(entries - linked)]
    return run, problems


def relocated_files(files: dict[str, Path], run: str) -> tuple[dict[str, Path], set[str], list[str]]:
    """The after side's files under the before side's names: results/<run>/graphs/X as graphs/X
    (and graphs-hub), with the names that were moved, and the files still in the old folders
    (which the new layout should not have: only links)."""
    kept: dict[str, Path] = {}
    moved: dict[str, Path] = {}
    stray = []
    for rel, path in files.items():
        parts = rel.split("/", 2)
        if len(parts) == 3 and parts[0] == run and parts[1] in GRAPH_FOLDERS:
            moved[f"{parts[1]}/{parts[2]}"] = path
        elif parts[0] in GRAPH_FOLDERS and not snakemake_marker(rel):
            stray.append(f"{rel}: a file (not a link) in the old folder beside results/{run}/{parts[0]}/")
        else:
            kept[rel] = path
    return {**kept, **moved}, set(moved), stray


def mismatches(before: Side, after: Side, run: str) -> int:
    """How many of the before side's graph files the after side's run folder lacks or has different."""
    after_files, _, _ = relocated_files(after.files, run)
    count = 0
    for rel in old_graph_files(before.files):
        other = after_files.get(rel)
        if other is None or compare_file(rel, before.files[rel], other, (before.root, after.root), unrelocate(run))[1]:
            count += 1
    return count


def graph_run(before: Side, after: Side, linked_run: str | None) -> tuple[str | None, str]:
    """The run folder whose graphs/ (and graphs-hub/) the before side's results/graphs/ (and
    results/graphs-hub/) moved into, and how it was found; None when there was no move (or it is
    ambiguous: the reason says which)."""
    if graph_runs(before.files) or not old_graph_files(before.files):
        return None, ""
    candidates = graph_runs(after.files)
    if not candidates:
        return None, ""
    if linked_run in candidates:
        return linked_run, "the run results/graphs/ links into"
    if len(candidates) == 1:
        return candidates[0], "the only run with a graphs folder"
    misses = {run: mismatches(before, after, run) for run in candidates}
    fewest = min(misses.values())
    best = [run for run in candidates if misses[run] == fewest]
    total = len(old_graph_files(before.files))
    if len(best) == 1:
        return best[0], f"of {candidates}, the run whose graphs match ({fewest} of {total} files differ)"
    return None, f"runs {best} match the before side's graphs equally well ({fewest} of {total} files differ)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    before, after = scan(args.before), scan(args.after)
    counts: Counter = Counter()
    problems: list[str] = []
    linked = {}
    for side, name in ((before, "before"), (after, "after")):
        if side.links:
            linked[name], link_problems = check_links(side, name)
            problems += link_problems
            where = f"results/{linked[name]}/graphs/" if linked[name] else "results/<run>/graphs/"
            counts[f"{name}: results/graphs/ link folder, links to {where} (not compared again)"] += len(side.links)
    run, how = graph_run(before, after, linked.get("after"))
    after_files, moved, rewrite = after.files, set(), None
    if run is not None:
        after_files, moved, stray = relocated_files(after.files, run)
        problems += stray
        rewrite = unrelocate(run)
        print(f"results/graphs/ and results/graphs-hub/ moved to results/{run}/ ({how})")
    elif how:
        problems.append(f"results/graphs/: cannot tell which run folder it moved to: {how}")
    for rel in sorted(set(before.files) | set(after_files)):
        if rel.startswith(("logs/", "benchmarks/")) or "/logs/" in rel or "/benchmarks/" in rel:
            counts["skipped (logs, benchmarks)"] += 1
            continue
        if rel not in before.files or rel not in after_files:
            side = "after" if rel in after_files else "before"
            shown = f"{run}/{rel}" if rel in moved else rel
            if any(marker in rel for marker in EXPECTED_ONE_SIDED):
                counts[f"only {side}, expected (new or renamed output)"] += 1
            else:
                problems.append(f"{shown}: only in {side}")
            continue
        if rel in moved:
            folder = rel.split("/")[0]
            counts[f"results/{folder}/ compared with results/{run}/{folder}/ (expected move)"] += 1
        kind, diffs = compare_file(rel, before.files[rel], after_files[rel], (args.before, args.after), rewrite)
        counts[f"{kind}: {'different' if diffs else 'same'}"] += 1
        shown = f"{rel} (after: {run}/{rel})" if rel in moved else rel
        problems += [f"{shown}: {d}" for d in diffs]
    for line, n in sorted(counts.items()):
        print(f"{n:7d}  {line}")
    for problem in problems:
        print(f"DIFF  {problem}")
    print("identical outputs" if not problems else f"{len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
