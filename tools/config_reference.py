"""Write docs/config-reference.md from src/circuitflow/schema.yaml.

    python tools/config_reference.py          # (re)write docs/config-reference.md
    python tools/config_reference.py --check  # exit 1, naming the file, when it is stale

The recipe knobs (marked `x-recipe: true` in the schema) come first, in one table; every other
knob follows under "Expert knobs", one table per section (key, type, default, description),
the top-level scalar keys (seed, device, ...) first. How the config files are used, prompts and
the LLM judge's endpoints are told in the fixed text below. The output depends only on the
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
    if "oneOf" in node:
        return " or ".join(_type(option) for option in node["oneOf"])
    kind = node.get("type", "")
    if isinstance(kind, list):
        kind = " or ".join(kind)
    if kind == "array" and "type" in node.get("items", {}):
        kind = f"list of {node['items']['type']}"
    if "enum" in node:
        kind = f"{kind}: " + ", ".join(f"`{v}`" for v in node["enum"])
    return _cell(kind) or "any"


def _default(node: dict, required: bool) -> str:
    if "default" not in node:
        return "(required)" if required else "(none)"
    return "`" + _cell(json.dumps(node["default"], ensure_ascii=False)) + "`"


def _leaves(node: dict, prefix: str = ""):
    """(dotted key, its schema node, whether it is required) for every leaf key, in schema order."""
    required = set(node.get("required", []))
    for name, child in node.get("properties", {}).items():
        key = f"{prefix}{name}"
        if child.get("type") == "object" and "properties" in child:
            yield from _leaves(child, f"{key}.")
        else:
            yield key, child, name in required


def _row(key: str, node: dict, required: bool) -> str:
    return (f"| `{key}` | {_type(node)} | {_default(node, required)} "
            f"| {_cell(node.get('description', ''))} |")


HEADER = "| key | type | default | description |\n|---|---|---|---|"

INTRO = """\
# Configuration reference

Generated from `src/circuitflow/schema.yaml` by `python tools/config_reference.py`; do
not edit by hand. Keys are dotted paths into the config (`transcoder.k` is `k` under
`transcoder:`).

`config/config.yaml` is the default run: it sets the recipe knobs below and the values that
differ from their defaults. Every key, its type and its default live in the schema
(`workflow/schemas/config.schema.yaml`, a link to `src/circuitflow/schema.yaml`, which ships
with the library). Snakemake validates the merged config against it before any job runs and
fills in the defaults: a misspelt key or a wrong type stops the run with one line naming the
key. Override the default run with your own file (merged over `config/config.yaml`; see
`config/clt.yaml`) or with single keys:

```sh
snakemake --cores 8 --configfile my-run.yaml results/graphs/
snakemake --cores 8 --config run=other seed=1 results/graphs/
```

Rules that span several keys are checked when the workflow is parsed, before any job
(`src/circuitflow/config_rules.py`, and `plan_workflow` for those that need the model):
`transcoder.k` below `transcoder.n_features` (topk, jumprelu); for `transcoder.kind: clt`,
`activations.layers` contiguous from 0, `activation: jumprelu`, `jumprelu_training:
calibrated` and no skip connection; `activations.layers` within the model's layers,
`features.layers` a subset of them, `dataset.context_length` within the model's context, and,
when graphs are requested, a transcoder for every layer."""

RECIPE = """\
## Recipe knobs

The keys a run is usually made of; `config/config.yaml` sets each of them. The default run's
budgets are sized for a 2-core CPU machine ([measurements.md](measurements.md)); on a GPU or a
bigger machine raise `dataset.train_tokens`, `transcoder.n_features` and `transcoder.steps`
together."""

NARRATIVE = """\
## Prompts

Each `config/prompts/<name>.txt` holds one prompt; `<name>` becomes the graph's slug. By the
seed's convention the last token is the token the model should predict: it is dropped from
the prompt and reported in `graph-scores.json` (probability, rank, whether it is among the
graph's target logits). Set `attribution.drop_last_token_as_target: false` to keep it.
Names are letters, digits, `-` and `_`. An empty prompt, or one longer than the model's
context, fails that prompt's job with a message naming the file; with `--keep-going` the
other prompts still complete.

## The LLM judge

By default every LLM job (classify_features, explain_features, score_explanations) starts
llama-cpp-python's OpenAI-compatible server on a free loopback port with `llm.local_model`
(SmolLM2's GGUF) and stops it afterwards: no key, no network. To use another server, set
`llm.base_url` (nothing is started then) and `llm.model`; the key is read from the environment
variable that `llm.api_key_env` names, and never written anywhere:

```yaml
# OpenAI                                  # vLLM (vllm serve Qwen/Qwen2.5-7B-Instruct)
llm:                                      llm:
  base_url: https://api.openai.com/v1       base_url: http://127.0.0.1:8000/v1
  model: gpt-4o-mini                        model: Qwen/Qwen2.5-7B-Instruct
  api_key_env: OPENAI_API_KEY               max_concurrency: 32
  max_concurrency: 16
# Ollama (ollama serve; ollama pull llama3.1:8b)
llm:
  base_url: http://127.0.0.1:11434/v1
  model: llama3.1:8b
  logprobs: false   # if your Ollama version rejects logprobs: no AUROC then
```

```sh
export OPENAI_API_KEY=...   # the key stays in your environment
snakemake --cores 8 --configfile my-judge.yaml interp     # my-judge.yaml: one of the llm blocks above
```

A remote `base_url` whose variable is unset stops the job before any request, naming the
variable. Replies are cached in one SQLite file per LLM job,
`results/<run>/interp/llm-cache/<stage>-<unit>.sqlite`, keyed by the judge (its model at its
endpoint, or the local GGUF's hash), the messages and the sampling parameters, so a rerun or a
crashed job pays for nothing twice; changing the judge or a prompt asks again. No two jobs
share a cache file and each opens its own in exclusive mode (no shared-memory index), so the
caches may sit on a cluster's network file system beside the other results."""

EXPERT = """\
## Expert knobs

Every other key, one table per section. The default run uses their defaults (its figures are
in [measurements.md](measurements.md)); change one when a measurement or an error message
points at it."""


def render(schema: dict | None = None) -> str:
    """The reference as Markdown text."""
    if schema is None:
        schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    props = schema.get("properties", {})
    sections = [name for name, child in props.items() if child.get("type") == "object" and "properties" in child]
    required = [f"`{name}`" for name in schema.get("required", [])]
    lines = [INTRO, ""]
    if required:
        named = ", ".join(required[:-1]) + f" and {required[-1]}" if len(required) > 1 else required[0]
        lines += [f"A config must set {named} (the default run does); any other section may be left out,",
                  "its keys taking their defaults.", ""]
    leaves = list(_leaves(schema))
    lines += [RECIPE, "", HEADER, *(_row(*leaf) for leaf in leaves if leaf[1].get("x-recipe")), "", NARRATIVE, "",
              EXPERT, ""]
    top = [leaf for leaf in leaves if "." not in leaf[0] and not leaf[1].get("x-recipe")]
    if top:
        lines += ["### Top-level keys (expert)", "", HEADER, *(_row(*leaf) for leaf in top), ""]
    for name in sections:
        rows = [_row(*leaf) for leaf in _leaves(props[name], f"{name}.") if not leaf[1].get("x-recipe")]
        if not rows:
            continue
        lines += [f"### {name} (expert)", ""]
        if props[name].get("description"):
            lines += [_cell(props[name]["description"]), ""]
        lines += [HEADER, *rows, ""]
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
