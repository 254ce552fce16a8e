"""Examples as the judge sees them, from circuit-tracer's per-feature JSON.

Split disjointly, unlike the seed (which scored on the very examples it explained from):
the classifier and explainer see the top activations; scoring's positives come from the
quantile groups and random samples, spread over the activation range, and never repeat a
window the explainer saw.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

TOP_GROUP = "Top activations"
RANDOM_GROUP = "Random samples"
MARK = ("<<<", ">>>")  # the seed's marking of the activating token
HIGHLIGHT = ("<<", ">>")  # delphi's fuzzing highlight


@dataclass(frozen=True)
class Snippet:
    """One text window shown to the judge: its tokens and each token's activation."""

    tokens: tuple[str, ...]
    acts: tuple[float, ...]
    peak: int  # index of the token the example was taken at

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def key(self) -> tuple:
        return self.tokens, self.peak

    def marked(self, mark: tuple[str, str] = MARK) -> str:
        """The text with the activating token marked, as the seed showed it."""
        return "".join(f"{mark[0]}{t}{mark[1]}" if i == self.peak else t for i, t in enumerate(self.tokens))

    def highlighted(self, positions, mark: tuple[str, str] = HIGHLIGHT) -> str:
        chosen = set(positions)
        return "".join(f"{mark[0]}{t}{mark[1]}" if i in chosen else t for i, t in enumerate(self.tokens))

    def firing_positions(self, fraction: float) -> list[int]:
        """Tokens at or above `fraction` of this snippet's peak activation (delphi's highlight rule)."""
        peak = max(self.acts) if self.acts else 0.0
        if peak <= 0:
            return []
        return [i for i, a in enumerate(self.acts) if a >= fraction * peak]


def snippet(example: dict) -> Snippet:
    return Snippet(tuple(example["tokens"]), tuple(float(a) for a in example["tokens_acts_list"]),
                   int(example["train_token_ind"]))


def groups(feature: dict) -> dict[str, list[dict]]:
    return {g["quantile_name"]: g["examples"] for g in feature.get("examples_quantiles", [])}


def explainer_examples(feature: dict, n: int) -> list[Snippet]:
    """The top activating examples, strongest first (what the classifier and explainer see)."""
    return [snippet(e) for e in groups(feature).get(TOP_GROUP, [])[:n]]


def held_out_positives(feature: dict, n: int, shown: list[Snippet], seed: int) -> list[Snippet]:
    """Up to `n` activating examples the explainer did not see, taken round-robin over the
    quantile groups (highest first) and the random samples, so they span the activation range."""
    seen = {s.key for s in shown}
    pools = []
    for name, examples in groups(feature).items():
        if name == TOP_GROUP:
            continue
        pool = [s for s in map(snippet, examples) if s.key not in seen and s.acts[s.peak] > 0]
        random.Random(f"{seed}:{feature.get('index')}:{name}").shuffle(pool)
        pools.append(pool)
    picked: list[Snippet] = []
    while len(picked) < n and any(pools):
        for pool in pools:
            while pool:
                candidate = pool.pop()
                if candidate.key not in seen:
                    seen.add(candidate.key)
                    picked.append(candidate)
                    break
            if len(picked) == n:
                break
    return picked


def top_tokens(feature: dict, n: int = 5) -> list[str]:
    """The most frequent activating tokens of the top examples (ties: the stronger first)."""
    counts: dict[str, int] = {}
    for s in explainer_examples(feature, 1000):
        token = s.tokens[s.peak]
        counts[token] = counts.get(token, 0) + 1
    return sorted(counts, key=lambda t: -counts[t])[:n]


def quote(token: str) -> str:
    """A token as it goes between double quotes: escapes visible; whitespace-only tokens keep
    their repr's quotes so they stay visible."""
    return repr(token)[1:-1].replace('"', '\\"') if token.strip() else repr(token)


def trivial_explanation(feature: dict) -> str:
    """The non-LLM baseline: the feature's token label (see circuitflow.interp.token_label)."""
    from circuitflow.interp.token_label import token_label  # token_label builds on this module

    return token_label(feature)
