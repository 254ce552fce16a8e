"""Compare the results/ folders of two runs of the same config: are the outputs the same?

    python benchmarks/compare_runs.py BEFORE_DIR AFTER_DIR

Each folder is a workflow directory holding ``results/``. Every output file is compared by
kind, and timings are left out (wall-clock figures differ between any two runs):

- parquet: the same columns and values (the bytes differ once page checksums are written);
- packed ``.bin``/``.gz`` and per-feature/graph JSON: the bytes must be identical;
- other JSON (metrics, manifests, scores, summaries): equal after dropping timing keys and
  writing the run folder's own absolute path as ``<run dir>``;
- ``.safetensors``: the same tensor names with bitwise-equal values (the header may differ);
- a transcoder set ``config.yaml``: the same architecture, hooks, scan and layer -> file map.

Format changes made on purpose are recognised rather than reported, and listed as such: the
set config's positional ``transcoders`` list read as layer -> file, a metrics file's
``settings`` block split into ``training`` (metrics) and ``*.architecture.json``, and the
``graphs`` rule's log renamed. Logs and Snakemake benchmarks are skipped. Prints one line per
kind and every difference; exits 1 if anything differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import yaml

TIMING_KEYS = {"seconds", "tokens_per_second", "forward_seconds", "wall_seconds"}
ARCHITECTURE_KEYS = ("activation", "n_features", "k", "skip_connection")
EXACT_JSON_PARTS = ("features/json", "neurons/json", "attribution", "graphs")
# Outputs that exist on one side only because of a deliberate rename or a new file.
EXPECTED_ONE_SIDED = (".architecture.json", "logs/", "benchmarks/", ".snakemake_timestamp")


def drop_timings(value):
    if isinstance(value, dict):
        return {k: drop_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [drop_timings(v) for v in value]
    return value


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


def compare_set_config(a: Path, b: Path) -> list[str]:
    ca, cb = (yaml.safe_load(p.read_text()) for p in (a, b))
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


def read_json(path: Path, root: Path):
    """JSON with the run folder's own absolute path replaced (prompt origins name it)."""
    return json.loads(path.read_text().replace(str(root.resolve()), "<run dir>"))


def compare_file(rel: str, a: Path, b: Path, roots: tuple[Path, Path]) -> tuple[str, list[str]]:
    """(kind, differences) for one output present on both sides."""
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
        return "transcoder set config", compare_set_config(a, b)
    exact = any(part in rel for part in EXACT_JSON_PARTS) and not rel.endswith("scores.json")
    if rel.endswith(".json") and not exact:
        ja, jb = (drop_timings(read_json(p, root)) for p, root in zip((a, b), roots))
        if rel.endswith(".metrics.json"):
            weights_a = a.with_name(a.name.removesuffix(".metrics.json") + ".safetensors")
            weights_b = b.with_name(b.name.removesuffix(".metrics.json") + ".safetensors")
            ja = normalise_metrics(ja, old_architecture(weights_a) if weights_a.is_file() else None)
            jb = normalise_metrics(jb, old_architecture(weights_b) if weights_b.is_file() else None)
        diffs = [] if ja == jb else [f"{key}: {ja.get(key)!r:.120} != {jb.get(key)!r:.120}"
                                     for key in sorted(set(ja) | set(jb)) if ja.get(key) != jb.get(key)]
        return "json without timings", diffs
    same = a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
    return "bytes", [] if same else ["bytes differ"]


def files(root: Path) -> dict[str, Path]:
    results = root / "results"
    if not results.is_dir():
        sys.exit(f"compare_runs: {results} does not exist")
    return {str(p.relative_to(results)): p for p in sorted(results.rglob("*")) if p.is_file()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    before, after = files(args.before), files(args.after)
    counts: Counter = Counter()
    problems: list[str] = []
    for rel in sorted(set(before) | set(after)):
        if rel.startswith(("logs/", "benchmarks/")) or "/logs/" in rel or "/benchmarks/" in rel:
            counts["skipped (logs, benchmarks)"] += 1
            continue
        if rel not in before or rel not in after:
            side = "after" if rel in after else "before"
            if any(marker in rel for marker in EXPECTED_ONE_SIDED):
                counts[f"only {side}, expected (new or renamed output)"] += 1
            else:
                problems.append(f"{rel}: only in {side}")
            continue
        kind, diffs = compare_file(rel, before[rel], after[rel], (args.before, args.after))
        counts[f"{kind}: {'different' if diffs else 'same'}"] += 1
        problems += [f"{rel}: {d}" for d in diffs]
    for line, n in sorted(counts.items()):
        print(f"{n:7d}  {line}")
    for problem in problems:
        print(f"DIFF  {problem}")
    print("identical outputs" if not problems else f"{len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
