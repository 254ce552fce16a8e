"""Every config rule that spans several keys (the schema checks one key at a time).

Each rule is checked when the workflow is parsed (`circuitflow.workflow.plan_workflow`, before
any job) and again by the code that would misbehave without it (the trainers, the transcoder
module), so settings built outside Snakemake are refused with the same line. Each message
names the keys involved and says how to fix them. Nothing here imports torch: parsing imports
this module.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """The config is invalid or does not fit the model; the message names the key."""


# Activations whose training picks the k largest pre-activations per token: topk, and jumprelu
# (trained as TopK before its thresholds are calibrated, or with k as its L0 target under ste).
TOPK_TRAINED = ("topk", "jumprelu")


def check_sparsity(activation: str, k: int, n_features: int) -> None:
    """transcoder.k against transcoder.n_features: 0 < k < n_features for a TopK-trained activation
    (a TopK that keeps every latent is not sparse); relu ignores k."""
    if activation not in TOPK_TRAINED:
        return
    if k < 1:
        raise ConfigError(f"transcoder.k {k} must be at least 1 for transcoder.activation {activation} "
                          f"(it keeps the k largest of transcoder.n_features {n_features} latents per token)")
    if k >= n_features:
        raise ConfigError(f"transcoder.k {k} must be below transcoder.n_features {n_features} for "
                          f"transcoder.activation {activation} (a TopK that keeps every latent is not sparse): "
                          "lower k or raise n_features")


def check_choice_names(key: str, names) -> None:
    """The judge's categories (or domain types, mechanisms) are matched whatever the case of the
    reply, so two names that differ only in case (or spacing around them) could never be told apart."""
    seen: dict[str, str] = {}
    for name in names:
        folded = name.strip().casefold()
        if not folded:
            raise ConfigError(f"{key} has an empty name; give every entry a name")
        if folded in seen:
            raise ConfigError(f"{key} names {seen[folded]!r} and {name!r}, which differ only in case or spacing; "
                              "the judge's reply is matched ignoring case, so rename or merge them")
        seen[folded] = name


def check_cross_layer(layers, activation: str, skip_connection: bool, jumprelu_training: str) -> None:
    """What transcoder.kind clt needs of the other keys."""
    layers = list(layers)
    if layers != list(range(len(layers))) or not layers:
        raise ConfigError(f"transcoder.kind clt needs activations.layers contiguous from layer 0 (circuit-tracer's "
                          f"CLT files are numbered 0..n-1), not {layers}; use 'all' or [0, 1, ..., m]")
    if activation != "jumprelu":
        raise ConfigError(f"transcoder.kind clt needs transcoder.activation: jumprelu, not {activation!r} (a CLT "
                          "is trained as TopK and saved with JumpReLU thresholds, the only sparse activation "
                          "circuit-tracer's load_clt reads); see config/clt.yaml")
    if jumprelu_training != "calibrated":
        raise ConfigError("transcoder.kind clt supports transcoder.jumprelu_training: calibrated only (TopK "
                          "training, then per-feature thresholds); straight-through training is per-layer only")
    if skip_connection:
        raise ConfigError("transcoder.kind clt needs transcoder.skip_connection: false (circuit-tracer's load_clt "
                          "never loads a skip path); see config/clt.yaml")
