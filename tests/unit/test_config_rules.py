"""The rules that span several config keys, each tested here at its one home
(circuitflow.config_rules); the callers' tests check only that they call it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from circuitflow.config_rules import (
    TOPK_TRAINED,
    ConfigError,
    check_choice_names,
    check_cross_layer,
    check_cross_layer_memory,
    check_sparsity,
    cross_layer_memory,
)


@pytest.mark.parametrize("activation", TOPK_TRAINED)
def test_sparsity_needs_k_between_one_and_below_n_features(activation):
    check_sparsity(activation, 1, 2)
    check_sparsity(activation, 31, 32)
    with pytest.raises(ConfigError, match=rf"^transcoder.k 32 must be below transcoder.n_features 32 for "
                                          rf"transcoder.activation {activation} .*: lower k or raise n_features$"):
        check_sparsity(activation, 32, 32)
    with pytest.raises(ConfigError, match="transcoder.k 64 must be below transcoder.n_features 32"):
        check_sparsity(activation, 64, 32)
    with pytest.raises(ConfigError, match=f"transcoder.k 0 must be at least 1 for transcoder.activation {activation}"):
        check_sparsity(activation, 0, 32)


def test_choice_names_must_differ_ignoring_case():
    check_choice_names("interp.categories", ["Math", "Code", "language"])
    with pytest.raises(ConfigError, match=r"^interp.categories names 'Math' and 'math ', which differ only in case"):
        check_choice_names("interp.categories", ["Math", "math "])
    with pytest.raises(ConfigError, match="interp.mechanisms has an empty name"):
        check_choice_names("interp.mechanisms", ["output", " "])


def test_sparsity_ignores_k_for_relu():
    check_sparsity("relu", 32, 16)  # relu sparsifies with an L1 penalty, not k


@pytest.mark.parametrize("arguments,message", [
    (([0, 1, 3], "jumprelu", False, "calibrated"),
     r"transcoder.kind clt needs activations.layers contiguous from layer 0 .*not \[0, 1, 3\]"),
    (([1, 2], "jumprelu", False, "calibrated"), r"contiguous from layer 0 .*not \[1, 2\]"),
    (([], "jumprelu", False, "calibrated"), r"contiguous from layer 0 .*not \[\]"),
    (([0, 1], "topk", False, "calibrated"), "transcoder.kind clt needs transcoder.activation: jumprelu, not 'topk'"),
    (([0, 1], "jumprelu", False, "ste"), "transcoder.kind clt supports transcoder.jumprelu_training: calibrated only"),
    (([0, 1], "jumprelu", True, "calibrated"), "transcoder.kind clt needs transcoder.skip_connection: false"),
])
def test_cross_layer_rules_name_the_keys(arguments, message):
    with pytest.raises(ConfigError, match=message):
        check_cross_layer(*arguments)


def test_cross_layer_accepts_what_config_clt_yaml_sets():
    check_cross_layer(range(30), "jumprelu", False, "calibrated")


def smollm2_clt_memory(n_features: int, calibration_tokens: int = 8192) -> dict:
    return cross_layer_memory(30, 576, n_features, shuffle_row_groups=4, row_group_tokens=8192, cache_bytes=2,
                              eval_tokens=2048, calibration_tokens=calibration_tokens)


def test_cross_layer_memory_counts_the_clt_that_was_measured():
    """config/clt.yaml on SmolLM2 (30 layers, d_model 576, 512 features): 146.0M parameters and a
    peak RSS of 15.0 GB measured (docs/measurements.md)."""
    memory = smollm2_clt_memory(512)
    decoders = 512 * 576 * 30 * 31 // 2
    assert memory["parameters"] == decoders + 30 * 512 * (576 + 2) + 30 * 576
    assert round(memory["parameters"] / 1e6, 1) == 146.0
    assert 14.0e9 < memory["total_bytes"] < 16.0e9
    check_cross_layer_memory(memory, 16, 512, 30)  # the default budget holds what config/clt.yaml trains


def test_a_clt_that_cannot_fit_its_memory_budget_is_refused_with_the_estimate_and_the_knobs():
    memory = smollm2_clt_memory(2048)  # 584M parameters: 9.3 GB for weights, gradients and Adam alone
    assert memory["state_bytes"] > 16 * memory["parameters"]
    with pytest.raises(ConfigError, match=r"transcoder.n_features 2048 over 30 layers has 584M parameters; training "
                                          r"needs about 2\d\.\d GB .* more than transcoder.clt_memory_gb 16: lower "
                                          r"transcoder.n_features .* raise transcoder.clt_memory_gb"):
        check_cross_layer_memory(memory, 16, 2048, 30)
    check_cross_layer_memory(memory, 32, 2048, 30)
    # the calibration tokens are held in float32 for every layer: 4x as many cost about 3.4 GB more
    grown = smollm2_clt_memory(512, calibration_tokens=4 * 8192)["total_bytes"] - smollm2_clt_memory(512)["total_bytes"]
    assert grown == 30 * 576 * 2 * 4 * 3 * 3 * 8192


def test_config_error_is_a_value_error_and_the_config_module_shares_it():
    from circuitflow import config

    assert issubclass(ConfigError, ValueError)  # callers that catch ValueError keep working
    assert config.ConfigError is ConfigError


def test_the_rules_and_the_config_mapping_import_no_torch():
    code = "import sys, circuitflow.config, circuitflow.config_rules; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
