"""TensorFlow Lite: converting Keras models and running the ``.tflite`` files.

This module owns :func:`export_tflite`, which converts a model of either Keras
generation (tf-keras, or Keras 3 on the TensorFlow or JAX backend) to float32, dynamic-range
int8 weights, or full-integer int8 with int8 inputs and outputs calibrated on
representative data, and writes the file atomically; and :func:`tflite_predict`,
:func:`evaluate_tflite` and :func:`tflite_input_dtype`, which run a file with the TFLite
interpreter one example at a time, (de)quantising int8 inputs and outputs. A Keras 3
model goes through a SavedModel of its inference call (``training=False``), written with
Keras 3's public ``keras.export.ExportArchive`` (on JAX it converts the call with
jax2tf); on the PyTorch backend export to ONNX instead (:func:`surgery.export_onnx`).
"""
from __future__ import annotations

import functools
import logging
import os
import tempfile
import warnings
from typing import Any, Mapping, Optional, Union

import numpy as np

from surgery._backend import tf
from surgery.engine.adapters import is_keras3, keras_of
from surgery.errors import SurgeryError
from surgery.atomic import write_atomically
from surgery.export.batches import (Data, RepresentativeData, class_ids, data_arrays,
                                      progress_bar, representative_examples)

logger = logging.getLogger(__name__)

QUANTIZE_MODES = (None, "dynamic", "int8")
#: examples drawn from ``representative_data`` to calibrate an int8 export
DEFAULT_CALIBRATION_EXAMPLES = 200


def _write_bytes(path: str, content: bytes) -> str:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())

    return write_atomically(path, write)


def _keras3_saved_model(model: Any, folder: str) -> None:
    """Write Keras 3 ``model``'s inference call as a SavedModel (endpoint ``serve``)."""
    keras3 = keras_of(model)
    backend = keras3.backend.backend()
    if backend not in ("tensorflow", "jax"):  # JAX: through jax2tf, inside ExportArchive
        raise SurgeryError(
            f"export_tflite(model=...) needs Keras 3's TensorFlow or JAX backend to convert "
            f"a Keras 3 model, but this process runs KERAS_BACKEND={backend!r}. Start Python "
            "with KERAS_BACKEND=tensorflow or jax (save the model as .keras and load it "
            "there), or "
            "export to ONNX on this backend with surgery.export_onnx(model, path).")
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise SurgeryError(
            "export_tflite(model=...) needs a functional or Sequential Keras 3 model with "
            "known inputs; build it with keras.Input or call it once on a batch first.")
    specs = [tf.TensorSpec(t.shape, t.dtype, name=t.name) for t in inputs]
    archive = keras3.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", functools.partial(model.__call__, training=False),
                         specs if len(specs) == 1 else [specs])
    archive.write_out(folder, verbose=False)


def _convert(model: Any, configure) -> bytes:
    """Build the converter for ``model``'s Keras generation, ``configure`` it, convert."""
    keras3 = is_keras3(model)
    with tempfile.TemporaryDirectory(prefix="surgery-tflite-") as folder, \
            warnings.catch_warnings():
        # int8 inputs: the converter asks for input statistics that the calibration gives
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        if keras3:
            _keras3_saved_model(model, folder)
            converter = tf.lite.TFLiteConverter.from_saved_model(folder,
                                                                 signature_keys=["serve"])
        else:
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
        configure(converter)
        return converter.convert()


def export_tflite(model: Any, path: str, quantize: Optional[str] = None,
                  representative_data: Optional[RepresentativeData] = None, *,
                  calibration_examples: int = DEFAULT_CALIBRATION_EXAMPLES) -> str:
    """Convert ``model`` to TensorFlow Lite and write it to ``path`` atomically.

    Args:
        model: a Keras model: tf-keras (Keras 2), or Keras 3 on the TensorFlow or JAX
            backend.
        path: the ``.tflite`` file to write; its folder is created if needed.
        quantize: ``None`` (float32), ``"dynamic"`` (dynamic-range: int8 weights, float
            activations) or ``"int8"`` (full-integer: int8 weights, activations, inputs
            and outputs, calibrated on ``representative_data``).
        representative_data: required for ``"int8"``: a ``tf.data.Dataset`` of input
            batches or of ``(x, y)`` batches, an array of inputs, ``data_generator.Splits``
            (its ``train`` split), or a callable returning an iterable of ``[x_batch]``
            lists (the converter's own convention).
        calibration_examples: at most this many examples are used to calibrate.

    Returns:
        ``path``.

    Raises:
        ValueError: unknown ``quantize``, or ``"int8"`` without ``representative_data``.
        SurgeryError: a Keras 3 model on the PyTorch backend (use
            ``KERAS_BACKEND=tensorflow``, or :func:`surgery.export_onnx`).

    Example::

        surgery.export_tflite(model, "model.tflite")
        surgery.export_tflite(model, "model_int8.tflite", quantize="int8",
                              representative_data=splits.train)
    """
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    if quantize == "int8" and representative_data is None:
        raise ValueError(
            'quantize="int8" needs representative_data to calibrate activation ranges: pass '
            "a tf.data.Dataset of input (or (x, y)) batches, or an array of inputs, e.g. "
            "representative_data=splits.train; or use quantize=\"dynamic\", which needs none")
    if calibration_examples < 1:
        raise ValueError(f"calibration_examples must be >= 1, got {calibration_examples}")

    def configure(converter) -> None:
        if quantize is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "int8":
            converter.representative_dataset = lambda: representative_examples(
                representative_data, calibration_examples)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8

    content = _convert(model, configure)
    _write_bytes(path, content)
    logger.info("wrote %s (%s, %d bytes)", path, quantize or "float32", len(content))
    return os.fspath(path)


def _interpreter(path: str):
    """A TFLite interpreter for ``path``: LiteRT's when installed, else ``tf.lite``'s."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no TFLite file at {path!r}; write one with export_tflite()")
    try:
        from ai_edge_litert.interpreter import Interpreter  # type: ignore  # lazy: optional
    except ImportError:
        with warnings.catch_warnings():  # tf.lite.Interpreter warns it is deprecated
            warnings.simplefilter("ignore", UserWarning)
            interpreter = tf.lite.Interpreter(model_path=os.fspath(path))
    else:
        interpreter = Interpreter(model_path=os.fspath(path))
    return interpreter


class _Runner:
    """One interpreter, fed one example at a time, with int8/uint8 (de)quantisation."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self.interpreter = _interpreter(self.path)
        inputs = self.interpreter.get_input_details()
        if len(inputs) != 1:
            raise ValueError(f"{self.path} has {len(inputs)} inputs; tflite_predict supports "
                             "models with one input")
        self.input = inputs[0]
        shape = list(self.input["shape"])
        shape[0] = 1
        self.interpreter.resize_tensor_input(self.input["index"], shape)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.outputs = self.interpreter.get_output_details()

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self.input["dtype"])

    def _quantise(self, x: np.ndarray) -> np.ndarray:
        dtype = self.input_dtype
        if not np.issubdtype(dtype, np.integer):
            return x.astype(dtype)
        scale, zero_point = self.input["quantization"]
        if not scale:
            return x.astype(dtype)
        info = np.iinfo(dtype)
        q = np.round(x.astype(np.float64) / scale + zero_point)
        return np.clip(q, info.min, info.max).astype(dtype)

    @staticmethod
    def _dequantise(y: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
        if np.issubdtype(y.dtype, np.integer):
            scale, zero_point = detail["quantization"]
            if scale:
                return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)
        return y.astype(np.float32) if np.issubdtype(y.dtype, np.floating) else y

    def __call__(self, example: np.ndarray) -> list[np.ndarray]:
        expected = tuple(int(d) for d in self.input["shape"][1:])
        if tuple(example.shape) != expected:
            raise ValueError(f"{self.path} expects examples of shape {expected}, got "
                             f"{tuple(example.shape)}")
        self.interpreter.set_tensor(self.input["index"], self._quantise(example[np.newaxis]))
        self.interpreter.invoke()
        return [self._dequantise(self.interpreter.get_tensor(d["index"]), d)[0]
                for d in self.outputs]


def tflite_predict(path: str, x: np.ndarray, *, progress: bool = True
                   ) -> Union[np.ndarray, list[np.ndarray]]:
    """Run the ``.tflite`` file at ``path`` on the inputs ``x``, one example at a time.

    Float inputs are quantised with the model's input scale and zero point when the file
    takes int8/uint8 inputs, and int8/uint8 outputs are dequantised, so the result is
    comparable with the Keras model's float32 output. A tqdm bar shows progress for more
    than ``PROGRESS_MIN_EXAMPLES`` examples. Models with several outputs give a list.

    Example::

        probs = surgery.tflite_predict("model_int8.tflite", x_test)
        accuracy = (probs.argmax(-1) == y_test.argmax(-1)).mean()
    """
    runner = _Runner(path)
    x = np.asarray(x)
    example_shape = tuple(int(d) for d in runner.input["shape"][1:])
    if x.ndim == len(example_shape):
        raise ValueError(f"x must be a batch of examples of shape {example_shape}, got a "
                         f"single example of shape {x.shape}; use x[None]")
    results: list[list[np.ndarray]] = [[] for _ in runner.outputs]
    for example in progress_bar(x, len(x), progress, "tflite"):
        for store, value in zip(results, runner(example)):
            store.append(value)
    stacked = [np.stack(r) if r else np.zeros((0,), np.float32) for r in results]
    return stacked[0] if len(stacked) == 1 else stacked


def evaluate_tflite(path: str, dataset: Data, *, progress: bool = True) -> float:
    """Top-1 accuracy of the ``.tflite`` file at ``path`` on ``dataset``.

    ``dataset``: a ``tf.data.Dataset`` of ``(x, y)`` batches or an ``(x, y)`` tuple of
    arrays; labels one-hot or integer. Returns a fraction in [0, 1].

    Example::

        acc = surgery.evaluate_tflite("model_int8.tflite", splits.test)
    """
    x, y = data_arrays(dataset)
    predictions = tflite_predict(path, x, progress=progress)
    if isinstance(predictions, list):
        predictions = predictions[0]
    accuracy = float(np.mean(class_ids(predictions) == class_ids(y))) if len(y) else 0.0
    logger.info("%s: accuracy %.4f on %d examples", path, accuracy, len(y))
    return accuracy


def tflite_input_dtype(path: str) -> np.dtype:
    """The dtype the ``.tflite`` file at ``path`` takes as input (int8 for a full-integer
    export).

    Example::

        assert surgery.export.tflite.tflite_input_dtype("model_int8.tflite") == np.int8
    """
    return _Runner(path).input_dtype


__all__ = ["export_tflite", "tflite_predict", "evaluate_tflite", "tflite_input_dtype",
           "QUANTIZE_MODES", "DEFAULT_CALIBRATION_EXAMPLES"]
