"""Negatives for scoring: validation windows on which a feature is verified not to fire.

The seed took document prefixes and assumed they did not activate the feature, while its
positives were windows around a firing: a judge could tell them apart by shape alone. Here a
pool of validation windows is run through the model (and the transcoders, for features), and
a negative is a window of the same length, with its peak token at the same offset, as a
positive, on which the feature's activation stays at or below a ceiling at every token: 0 for
transcoder features (verified zero), a small fraction of the top activation for MLP neurons
(whose gated activations are almost never at or below 0 for a whole window). "Hard"
negatives also contain one of the feature's top activating tokens.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from circuitflow.data.dataset import read_windows
from circuitflow.features.sources import NeuronSource, TranscoderSource
from circuitflow.interp.examples import Snippet, top_tokens
from circuitflow.logs import pick_device
from circuitflow.model.hooks import ModuleRecorder, decoder_layers
from circuitflow.model.loading import load_model
from circuitflow.transcoders.replacement import load_replacement
from circuitflow.transcoders.sets import read_transcoder_set

log = logging.getLogger("circuitflow.interp")

ATTEMPTS_PER_NEGATIVE = 200  # random windows tried per wanted negative before giving up


class ActivationPool:
    """Selected features' activations over a seeded pool of validation windows."""

    def __init__(self, model_dir: str | Path, validation: str | Path, unit: str, transcoder_set: str | Path | None,
                 wanted: dict[int, list[int]], n_windows: int, neurons_per_layer: int, seed: int,
                 model_dtype: str, device: str, batch_size: int = 8):
        model, tokenizer = load_model(model_dir, model_dtype)
        self.device = pick_device(device)
        model.to(self.device)
        windows = read_windows(validation)
        tokens = np.asarray(windows.column("tokens").to_pylist(), dtype=np.int64)
        rows = np.sort(np.random.default_rng([seed, 7]).permutation(len(tokens))[:n_windows])
        self.tokens = tokens[rows]
        decoded: dict[int, str] = {}

        def text_of(token: int) -> str:  # decoded one token at a time, as collect_features does
            if token not in decoded:
                decoded[token] = tokenizer.decode([token])
            return decoded[token]

        self.bos_text = text_of(int(self.tokens[0, 0]))  # every window starts with BOS
        self.text = [[text_of(int(t)) for t in row] for row in self.tokens]
        blocks = decoder_layers(model)
        sources, columns = {}, {}
        if unit == "features":
            set_config = read_transcoder_set(transcoder_set)
            replacement = load_replacement(set_config, sorted(wanted), decoders=False)
            for layer in wanted:
                sources[layer] = TranscoderSource(replacement, layer, "", set_config.feature_input_hook)
                columns[layer] = torch.tensor(wanted[layer])
        else:
            for layer in wanted:
                sources[layer] = NeuronSource(blocks[layer], layer, neurons_per_layer, seed, "")
                columns[layer] = torch.from_numpy(np.searchsorted(sources[layer].feature_ids, wanted[layer]))
        recorder = ModuleRecorder({layer: s.hooked_module(blocks[layer]) for layer, s in sources.items()},
                                  {layer: s.reader(blocks[layer]) for layer, s in sources.items()})
        parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in sources}
        with torch.inference_mode():
            for start in range(0, len(self.tokens), batch_size):
                ids = torch.from_numpy(self.tokens[start:start + batch_size]).to(self.device)
                captured = recorder.run(model, ids)
                for layer, source in sources.items():
                    acts = source.encode(captured[layer].cpu())[..., columns[layer]]
                    acts[:, 0] = 0  # BOS: never attributed, never counted as firing
                    parts[layer].append(acts.float())
        recorder.close()
        # (layer, feature) -> [windows, positions]
        self.acts = {(layer, f): torch.cat(parts[layer])[..., i].numpy()
                     for layer in sources for i, f in enumerate(wanted[layer])}

    def negatives(self, layer: int, feature: int, shapes: list[Snippet], n: int, hard_share: float,
                  feature_json: dict, seed: int, ceiling: float = 0.0) -> list[Snippet]:
        """Up to `n` windows where the feature stays at or below `ceiling`, shaped like `shapes` (cycled)."""
        acts = self.acts[(layer, feature)]
        n_windows, n_pos = acts.shape
        rng = np.random.default_rng([seed, layer, feature])
        hard_tokens = set(top_tokens(feature_json))
        n_hard = int(round(n * hard_share)) if hard_tokens else 0
        picked: list[Snippet] = []
        used: set[tuple[int, int]] = set()
        for i in range(n):
            shape = shapes[i % len(shapes)]
            length = len(shape.tokens)
            starts_at_bos = shape.tokens[0] == self.bos_text
            want_hard = i < n_hard
            for attempt in range(ATTEMPTS_PER_NEGATIVE):
                w = int(rng.integers(n_windows))
                start = 0 if starts_at_bos else int(rng.integers(1, max(2, n_pos - length + 1)))
                if start + length > n_pos or (w, start) in used or acts[w, start:start + length].max() > ceiling:
                    continue
                tokens = tuple(self.text[w][start:start + length])
                if want_hard and attempt < ATTEMPTS_PER_NEGATIVE // 2 and not hard_tokens & set(tokens):
                    continue  # look for a hard one first, then take any verified negative
                used.add((w, start))
                picked.append(Snippet(tokens, tuple(float(a) for a in acts[w, start:start + length]), shape.peak))
                break
        return picked
