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


# The part of a CLT job's peak that the terms below do not count: SmolLM2's CLT at 512 features
# per layer peaked at 15.0 GB RSS against 12.5 GB of counted terms (docs/measurements.md).
RUNTIME_BYTES = int(2.5e9)


def cross_layer_memory(n_layers: int, d_model: int, n_features: int, *, shuffle_row_groups: int,
                       row_group_tokens: int, cache_bytes: int, eval_tokens: int, calibration_tokens: int) -> dict:
    """What training a CLT holds at its peak, in bytes, from the config alone.

    - state: 16 bytes a parameter (float32 weights, gradients and Adam's two moments), plus the
      thresholded copy saved at the end (4 bytes a parameter) and two decoder-sized temporaries
      of the unit-norm constraint;
    - data: each layer's shuffle buffer (row groups in the cache dtype, inputs and outputs, held
      twice while it is refilled), the held-out tokens and the calibration tokens (float32,
      inputs and outputs, held three times while they are gathered and rescaled).
    - the rest (`RUNTIME_BYTES`): the interpreter, torch, the allocator's slack.
    """
    decoder = n_features * d_model * n_layers * (n_layers + 1) // 2
    parameters = decoder + n_layers * n_features * (d_model + 2) + n_layers * d_model
    state = 16 * parameters + 4 * parameters + 8 * decoder
    buffers = 2 * n_layers * shuffle_row_groups * row_group_tokens * d_model * 2 * cache_bytes
    held = n_layers * d_model * 2 * 4 * (2 * eval_tokens + 3 * calibration_tokens)
    return {"parameters": parameters, "state_bytes": state, "data_bytes": buffers + held,
            "total_bytes": state + buffers + held + RUNTIME_BYTES}


def check_cross_layer_memory(memory: dict, budget_gb: float, n_features: int, n_layers: int) -> None:
    """Refuse a CLT whose training would not fit `transcoder.clt_memory_gb` (before any job)."""
    total = memory["total_bytes"] / 1e9
    if total > budget_gb:
        raise ConfigError(
            f"transcoder.kind clt with transcoder.n_features {n_features} over {n_layers} layers has "
            f"{memory['parameters'] / 1e6:.0f}M parameters; training needs about {total:.1f} GB "
            f"({memory['state_bytes'] / 1e9:.1f} GB of weights, gradients, Adam's moments and copies, "
            f"{memory['data_bytes'] / 1e9:.1f} GB of data buffers), more than transcoder.clt_memory_gb "
            f"{budget_gb:g}: lower transcoder.n_features (or train fewer layers), lower "
            "transcoder.calibration_tokens or activations.row_group_tokens, or raise transcoder.clt_memory_gb "
            "if the training machine has the memory")
