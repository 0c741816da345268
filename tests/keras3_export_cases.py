"""Keras 3 export cases run in a child process by tests/test_keras3_export.py.

``python tests/keras3_export_cases.py OUT`` runs under the ``KERAS_BACKEND`` its parent
sets: it imports Keras 3 before ``surgery``, builds MobileNetV2 (alpha 0.35, logits,
seeded random weights and BatchNormalization statistics from tests/keras3_cases.py),
prunes it with ``surgery.plan(ratio=0.3)`` + ``surgery.apply``, exports it and prints one
``RESULT {json}`` line of measurements (max abs errors against Keras, file sizes, the
messages of the errors raised). On the TensorFlow backend (96×96 input) it writes TFLite
float32, dynamic-range and int8 files and an ONNX file; on PyTorch (32×32) it exports
ONNX; on JAX a small residual CNN to TFLite float32 (through jax2tf) and a pruned
MobileNetV2 (alpha 0.35, 96x96) to ONNX (tf2onnx in a TensorFlow-backend process); on
PyTorch it checks that TFLite is refused clearly.
"""
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # DESIGN.md: oneDNN segfaults on odd widths
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import keras  # noqa: E402  (Keras 3 first: the process has chosen before `surgery`)

from keras3_cases import randomize, residual  # noqa: E402


def _error(call) -> str:
    try:
        call()
    except Exception as e:  # noqa: BLE001  (the test reads the class and message)
        return f"{type(e).__name__}: {e}"
    return "no error"


def _max_error(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def main(out: str) -> dict:
    import surgery
    from surgery.export import onnx as onnx_export

    backend = keras.backend.backend()
    size = 96 if backend == "tensorflow" else 32
    keras.utils.set_random_seed(0)
    if backend == "jax":  # a small model: jax2tf conversion is slow
        model, size = randomize(residual()), 16
    else:
        model = randomize(keras.applications.MobileNetV2(
            input_shape=(size, size, 3), alpha=0.35, weights=None, classes=5,
            classifier_activation=None))
    pruned = surgery.apply(model, surgery.plan(model, ratio=0.3))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, size, size, 3)).astype(np.float32)
    calibration = rng.normal(size=(16, size, size, 3)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(pruned.predict(x, verbose=0))
    report = dict(backend=backend, params=[model.count_params(), pruned.count_params()],
                  output_scale=float(np.abs(expected).max()),
                  unpruned_vs_pruned=_max_error(model.predict(x, verbose=0), expected),
                  seconds={}, sizes={}, errors={})
    # training-mode BatchNormalization (batch statistics) must differ from inference, or
    # the errors below could not tell an export that traced training=True; measured on a
    # copy, as a training call updates the moving statistics
    copy = keras.models.clone_model(pruned)
    copy.set_weights(pruned.get_weights())
    report["training_vs_inference"] = _max_error(
        keras.ops.convert_to_numpy(copy(x, training=True)), expected)

    def timed(name, call):
        start = time.perf_counter()
        value = call()
        report["seconds"][name] = round(time.perf_counter() - start, 2)
        return value

    onnx_path = os.path.join(out, f"pruned_{backend}.onnx")
    onnx_model, onnx_x, onnx_expected = pruned, x, expected
    if backend == "jax":  # ONNX on JAX: a pruned MobileNetV2 (alpha 0.35, 96x96)
        mobilenet = randomize(keras.applications.MobileNetV2(
            input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=5,
            classifier_activation=None))
        onnx_model = surgery.apply(mobilenet, surgery.plan(mobilenet, ratio=0.3))
        onnx_x = rng.normal(size=(8, 96, 96, 3)).astype(np.float32)
        onnx_expected = keras.ops.convert_to_numpy(onnx_model.predict(onnx_x, verbose=0))
        report["onnx_params"] = [mobilenet.count_params(), onnx_model.count_params()]
        report["onnx_unpruned_vs_pruned"] = _max_error(mobilenet.predict(onnx_x, verbose=0),
                                                       onnx_expected)
    refused = _error(lambda: timed("onnx", lambda: surgery.export_onnx(
        onnx_model, onnx_path, verify_with=onnx_x[:4])))
    if refused == "no error":
        report["sizes"]["onnx"] = os.path.getsize(onnx_path)
        report["errors"]["onnx"] = _max_error(surgery.onnx_predict(onnx_path, onnx_x),
                                              onnx_expected)
    else:
        report["onnx_refused"] = refused

    if backend == "jax":  # TFLite through jax2tf: float32 must match Keras
        path = os.path.join(out, "pruned_jax.tflite")
        timed("float32", lambda: surgery.export_tflite(pruned, path))
        report["errors"]["float32"] = _max_error(surgery.tflite_predict(path, x, progress=False),
                                                 expected)
        return report
    if backend != "tensorflow":
        report["tflite_refused"] = _error(
            lambda: surgery.export_tflite(pruned, os.path.join(out, "refused.tflite")))
        report["tflite_written"] = os.path.exists(os.path.join(out, "refused.tflite"))
        return report

    for mode in (None, "dynamic", "int8"):
        name = mode or "float32"
        path = os.path.join(out, f"pruned_{name}.tflite")
        timed(name, lambda: surgery.export_tflite(
            pruned, path, quantize=mode, representative_data=calibration,
            calibration_examples=16))
        report["sizes"][name] = os.path.getsize(path)
        report[f"{name}_input_dtype"] = str(surgery.export.tflite.tflite_input_dtype(path))
        got = surgery.tflite_predict(path, x, progress=False)
        report["errors"][name] = _max_error(got, expected)
        report[f"{name}_argmax_agreement"] = float(np.mean(got.argmax(-1)
                                                           == expected.argmax(-1)))

    # the check in export_onnx(verify_with=...) must refuse a file that drifts
    real = onnx_export.onnx_predict
    onnx_export.onnx_predict = lambda path, data, **kw: real(path, data, **kw) + 1e-3
    drift_path = os.path.join(out, "drift.onnx")
    report["drift_refused"] = _error(lambda: surgery.export_onnx(pruned, drift_path,
                                                                 verify_with=x[:2]))
    onnx_export.onnx_predict = real
    report["drift_written"] = os.path.exists(drift_path)
    report["leftovers"] = sorted(f for f in os.listdir(out) if f.startswith("."))
    return report


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1])), flush=True)
