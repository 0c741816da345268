"""Exporting pruned Keras 3 models: TFLite (float32, dynamic-range, int8) and ONNX.

Keras 3 runs in child processes (tests/keras3_export_cases.py), one per backend, started
together: ``KERAS_BACKEND`` is read once at import and this suite's process uses
tf-keras. On TensorFlow, MobileNetV2 (alpha 0.35, 96×96, logits, random weights and
BatchNormalization statistics) pruned with ``surgery.plan(ratio=0.3)`` + ``surgery.apply``
must come out of TFLite float32 and ONNX Runtime within 1e-4 of Keras, and the quantised
files must run and agree on the class; on PyTorch the ONNX export must match too, on JAX
the TFLite float32 one; the exports that cannot be done (TFLite on PyTorch, ONNX on JAX
without ``jax2onnx``) are refused clearly.
"""
import os

import pytest
from keras3_child import finish, start

BACKENDS = ("tensorflow", "torch", "jax")


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    running = {}
    for backend in BACKENDS:
        out = tmp_path_factory.mktemp(backend)
        running[backend] = (out, start(backend, "keras3_export_cases.py", out))
    return running


def _report(reports, backend):
    out, proc = reports[backend]
    return finish(proc), out


def test_the_test_can_tell_a_wrong_model(reports):
    report, _ = _report(reports, "tensorflow")
    assert report["params"][1] <= 0.85 * report["params"][0]
    assert report["output_scale"] > 0.1  # random BN statistics: outputs are not ~0
    assert report["unpruned_vs_pruned"] > 1e-2
    assert report["training_vs_inference"] > 1e-2  # an export tracing training=True shows


def test_float32_tflite_and_onnx_of_pruned_keras3_mobilenet_match_keras(reports):
    report, out = _report(reports, "tensorflow")
    assert report["errors"]["float32"] <= 1e-4, report
    assert report["errors"]["onnx"] <= 1e-4, report
    assert report["float32_input_dtype"] == "float32"
    assert report["sizes"]["float32"] > 100_000 and report["sizes"]["onnx"] > 100_000
    assert os.path.isfile(os.path.join(out, "pruned_tensorflow.onnx"))


def test_quantised_tflite_of_pruned_keras3_mobilenet_runs(reports):
    report, _ = _report(reports, "tensorflow")
    assert report["int8_input_dtype"] == "int8"
    assert report["dynamic_input_dtype"] == "float32"
    for mode in ("dynamic", "int8"):
        # quantised: close to, but not equal to, Keras (scale of the outputs about 0.4)
        assert 0 < report["errors"][mode] <= 0.05 * report["output_scale"], report
        assert report[f"{mode}_argmax_agreement"] >= 0.75, report
        assert report["sizes"][mode] < 0.6 * report["sizes"]["float32"], report["sizes"]


def test_export_onnx_verify_with_refuses_drift_and_writes_nothing(reports):
    report, _ = _report(reports, "tensorflow")
    assert report["drift_refused"].startswith("SurgeryError: export_onnx(verify_with=...)")
    assert "atol=" in report["drift_refused"]
    assert report["drift_written"] is False and report["leftovers"] == []


def test_onnx_on_torch_matches_keras_and_tflite_is_refused(reports):
    report, _ = _report(reports, "torch")
    assert report["errors"]["onnx"] <= 1e-4, report
    assert report["training_vs_inference"] > 1e-2
    refused = report["tflite_refused"]
    assert refused.startswith("SurgeryError: export_tflite(model=...)")
    assert "KERAS_BACKEND=tensorflow" in refused and "export_onnx" in refused
    assert report["tflite_written"] is False


def test_jax_tflite_matches_keras(reports):
    report, _ = _report(reports, "jax")
    assert report["errors"]["float32"] <= 1e-4, report


def test_onnx_of_pruned_mobilenet_on_jax_matches_keras(reports):
    report, out = _report(reports, "jax")
    assert "onnx_refused" not in report, report
    assert report["onnx_params"][1] <= 0.85 * report["onnx_params"][0]
    assert report["onnx_unpruned_vs_pruned"] > 1e-2  # a wrong model would show
    assert report["errors"]["onnx"] <= 1e-4, report
    assert os.path.isfile(os.path.join(out, "pruned_jax.onnx"))
