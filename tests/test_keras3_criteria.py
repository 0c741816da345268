"""Every criterion on Keras 3 models, on the TensorFlow, JAX and PyTorch backends;
``flops_target`` on Keras 3; and the Keras-2-only parts (tfmot sparsity) and mixed Keras
generations refused with a SurgeryError that names the way out.

One child process per backend (tests/keras3_criteria_cases.py: Keras 3 imported before
``surgery``, ``KERAS_BACKEND`` set) scores the same small CNN with seeded weights. The
oracles live in this process: the weight-based scores must equal NumPy on the kernels, and
the data-driven ones (``apoz``, ``taylor``, ``thinet``) must equal what the tf-keras
implementation gives for the same architecture, weights and data.
"""
import importlib.util
import os
import sys

import numpy as np
import pytest

import surgery
from surgery.pruning.criteria import channel_scores

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import keras3_criteria_cases as cases  # noqa: E402  (imports no Keras at module level)
from keras3_child import run_case  # noqa: E402

BACKENDS = [b for b, module in (("tensorflow", "tensorflow"), ("jax", "jax"),
                                ("torch", "torch")) if importlib.util.find_spec(module)]


def _child(backend):
    flags = ["--flops"] if backend == "tensorflow" else []
    report = run_case(backend, "keras3_criteria_cases.py", *flags, timeout=300)
    assert report["backend"] == backend
    return report


_REPORTS: dict = {}


@pytest.fixture(params=BACKENDS)
def report(request):
    if request.param not in _REPORTS:
        _REPORTS[request.param] = _child(request.param)
    return _REPORTS[request.param]


@pytest.fixture(scope="module")
def keras2():
    """The same model and data in tf-keras: weights, NumPy references and the tf-keras
    scores of the data-driven criteria."""
    model, xy = cases.build(surgery.keras), cases.data()
    scores = {c: channel_scores(model, list(cases.LAYERS), c, data=xy, n_locations=64)
              for c in ("apoz", "activation", "taylor", "thinet")}
    return {"references": cases.references(model), "scores": scores}


def _scores(report, criterion):
    return {k: np.asarray(v) for k, v in report["criteria"]["scores"][criterion].items()}


@pytest.mark.parametrize("criterion", ["l1", "l2", "fpgm", "bn_gamma"])
def test_weight_criteria_equal_numpy(report, keras2, criterion):
    for name, got in _scores(report, criterion).items():
        want = keras2["references"][name][criterion]
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=f"{criterion} {name}")
        assert list(np.argsort(got, kind="stable")) == list(np.argsort(want, kind="stable"))


def test_data_criteria_equal_tf_keras(report, keras2):
    ref = keras2["scores"]
    for name, got in _scores(report, "apoz").items():  # a sign flip of a ~0 value may differ
        np.testing.assert_allclose(got, ref["apoz"][name], atol=2e-3, err_msg=name)
    for name, got in _scores(report, "taylor").items():
        np.testing.assert_allclose(got, ref["taylor"][name], rtol=1e-3,
                                   atol=1e-4 * ref["taylor"][name].max(), err_msg=name)
    for name, got in _scores(report, "thinet").items():
        np.testing.assert_array_equal(got, ref["thinet"][name], err_msg=name)
    for name, got in _scores(report, "activation").items():
        np.testing.assert_allclose(got, ref["activation"][name], rtol=1e-4, err_msg=name)


def test_dead_filters_and_small_gamma_score_lowest(report):
    for criterion in ("apoz", "activation", "taylor", "l1", "thinet"):
        scores = _scores(report, criterion)
        for name, dead in cases.DEAD.items():
            assert int(np.argmin(scores[name])) == dead, (criterion, name, scores[name])
    for criterion in ("apoz", "taylor"):
        assert min(_scores(report, criterion)["c2"]) == pytest.approx(0.0, abs=1e-9)
    layer, channel = cases.SMALL_GAMMA
    assert int(np.argmin(_scores(report, "bn_gamma")[layer])) == channel


def test_tf_data_dataset_equals_arrays_on_tensorflow(report):
    if report["backend"] != "tensorflow":
        pytest.skip("tf.data.Dataset is checked on the TensorFlow backend")
    for criterion in ("apoz", "taylor"):
        got = report["criteria"][f"dataset_{criterion}"]
        for name, want in _scores(report, criterion).items():
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-7)


def test_keras2_only_parts_are_refused_and_tfmot_never_loaded(report):
    assert not report["tfmot_on_import"], "import surgery must not import tfmot"
    r = report["refusals"]
    assert not r["tfmot_after"], "the refusals must come before importing tfmot"
    for key in ("sparsity_wrap", "sparsity_unstructured"):
        assert r[key].startswith("SurgeryError: surgery.pipeline."), r[key]
        assert "tf-keras (Keras 2) models only" in r[key] and "surgery.plan" in r[key]
    assert r["penalties"] == "no error"  # the penalties are Keras 3 regularizers too
    assert r["sparsity_callbacks"].startswith(
        "SurgeryError: surgery.pipeline.sparsity.pruning_callbacks"), r["sparsity_callbacks"]
    assert "TF_USE_LEGACY_KERAS=1" in r["sparsity_callbacks"]


def test_mixed_generations_and_symbolic_data_are_refused(report):
    r = report["refusals"]
    assert r["verify_mixed"].startswith(
        "SurgeryError: these models were built by different Keras generations"), r
    assert r["verify_symbolic"].startswith("SurgeryError: verify(x=...): got a symbolic"), r
    assert r["scores_symbolic"].startswith(
        "SurgeryError: channel_scores(data=...): got a symbolic"), r
    assert r["scores_tf_keras_layer"].startswith(
        "SurgeryError: layer_names must hold layer names"), r


def test_flops_target_on_keras3(report):
    if report["backend"] != "tensorflow":
        pytest.skip("flops_target is checked on the TensorFlow backend")
    for name, result in report["flops"].items():
        assert abs(result["reached"] - 0.5) <= 0.01, (name, result)
        assert result["estimate"] == pytest.approx(result["reached"], abs=1e-6), (name, result)
