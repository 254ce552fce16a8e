"""The rules that span several config keys, each tested here at its one home
(circuitflow.config_rules); the callers' tests check only that they call it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from circuitflow.config_rules import TOPK_TRAINED, ConfigError, check_choice_names, check_cross_layer, check_sparsity


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


def test_config_error_is_a_value_error_and_the_config_module_shares_it():
    from circuitflow import config

    assert issubclass(ConfigError, ValueError)  # callers that catch ValueError keep working
    assert config.ConfigError is ConfigError


def test_the_rules_and_the_config_mapping_import_no_torch():
    code = "import sys, circuitflow.config, circuitflow.config_rules; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
