"""Keras 3 models (TensorFlow backend) through the same public API: plan, apply, verify,
zero_channels, count_flops, and `.keras` files that plain Keras 3 loads.

Keras 3 runs in child processes (tests/keras3_cases.py): ``KERAS_BACKEND`` is read once
at import and this suite's process uses tf-keras. The first child imports Keras 3 before
``surgery`` (no ``TF_USE_LEGACY_KERAS``), prunes MobileNetV2 (alpha 0.35, 32×32) and a
small residual CNN built with ``x + y``, ``ops.relu6`` and ``ops.hard_swish`` at ratio
0.3, and saves them; the second loads the files without ``surgery``.
"""

import pytest
from keras3_child import run_case

CASES = ("mobilenetv2", "residual")


def _child(mode, out):
    return run_case("tensorflow", "keras3_cases.py", mode, out)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    out = tmp_path_factory.mktemp("keras3")
    return out, _child("prune", out)


def test_import_after_keras3_keeps_keras3_and_refuses_kerassurgeon_clearly(pruned):
    report = pruned[1]
    assert report["legacy_env"] is None
    assert report["tf_keras_is_keras3"]
    assert report["surgeon"].startswith("SurgeryError")
    assert "TF_USE_LEGACY_KERAS=1" in report["surgeon"]


@pytest.mark.parametrize("case", CASES)
def test_keras3_prune_is_exact_and_smaller(pruned, case):
    result = pruned[1][case]
    assert result["type"].startswith("keras.src.models"), result["type"]
    assert result["verify"] <= 1e-5, result
    assert result["moved"] > 1e-2, "zeroing the planned channels must move the outputs"
    assert result["verify_wrong_channels"] > 1e-3, "the oracle must catch a wrong cut"
    before, after = result["params"]
    assert after <= 0.85 * before, result["params"]
    assert result["flops"][1] < result["flops"][0]


def test_mixing_keras_generations_is_refused(pruned):
    assert pruned[1]["mixed"].startswith("SurgeryError: these models were built by "
                                          "different Keras generations")


def test_pruned_keras3_models_load_in_plain_keras3(pruned):
    report = _child("load", pruned[0])
    assert report["surgery_imported"] is False
    for case in CASES:
        assert report[case] <= 1e-6, report
