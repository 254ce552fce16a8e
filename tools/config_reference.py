"""Write docs/config-reference.md from src/circuitflow/schema.yaml.

    python tools/config_reference.py          # (re)write docs/config-reference.md
    python tools/config_reference.py --check  # exit 1, naming the file, when it is stale

One table per top-level section of the schema (key, type, default, description); the top-level
scalar keys (run, seed, ...) come first under "Top-level keys". The output depends only on the
schema, so it is deterministic.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "src" / "circuitflow" / "schema.yaml"
OUTPUT = ROOT / "docs" / "config-reference.md"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;")


def _type(node: dict) -> str:
    kind = node.get("type", "")
    if isinstance(kind, list):
        kind = " or ".join(kind)
    if "enum" in node:
        kind = f"{kind}: " + ", ".join(f"`{v}`" for v in node["enum"])
    return _cell(kind) or "any"


def _default(node: dict, required: bool) -> str:
    if "default" not in node:
        return "(required)" if required else "(none)"
    return "`" + _cell(json.dumps(node["default"], ensure_ascii=False)) + "`"


def _rows(node: dict, prefix: str) -> list[str]:
    rows = []
    required = set(node.get("required", []))
    for name, child in node.get("properties", {}).items():
        key = f"{prefix}{name}"
        if child.get("type") == "object" and "properties" in child:
            rows.extend(_rows(child, f"{key}."))
            continue
        rows.append(
            f"| `{key}` | {_type(child)} | {_default(child, name in required)} "
            f"| {_cell(child.get('description', ''))} |"
        )
    return rows


HEADER = "| key | type | default | description |\n|---|---|---|---|"


def render(schema: dict | None = None) -> str:
    """The reference as Markdown text."""
    if schema is None:
        schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    lines = [
        "# Configuration reference",
        "",
        "Generated from `src/circuitflow/schema.yaml` by `python tools/config_reference.py`; do",
        "not edit by hand. Keys are dotted paths into the config (`transcoder.k` is `k` under",
        "`transcoder:`). How the config files are used: [config/README.md](../config/README.md).",
        "",
    ]
    props = schema.get("properties", {})
    top = {k: v for k, v in props.items() if not (v.get("type") == "object" and "properties" in v)}
    if top:
        lines += ["## Top-level keys", "", HEADER]
        lines += _rows({"properties": top, "required": schema.get("required", [])}, "")
        lines.append("")
    required = set(schema.get("required", []))
    for name, child in props.items():
        if name in top:
            continue
        lines += [f"## {name}", ""]
        if child.get("description"):
            lines += [_cell(child["description"]), ""]
        if name in required:
            lines += ["This section is required.", ""]
        lines += [HEADER, *_rows(child, f"{name}."), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else None
        if current != text:
            print(f"{OUTPUT.relative_to(ROOT)} is stale: run python tools/config_reference.py",
                  file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
