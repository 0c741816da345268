"""Export to TensorFlow Lite, running the exported files, and measuring their size.

This module owns the last step of the pipeline: :func:`export_tflite` converts a Keras
model (float32, dynamic-range int8 weights, or full-integer int8 with int8 inputs and
outputs calibrated on representative data) and writes the ``.tflite`` file atomically;
:func:`tflite_predict` and :func:`evaluate_tflite` run a file with the TFLite interpreter
one example at a time, (de)quantising int8 inputs and outputs; :func:`size_table` and
:func:`size_table_markdown` report raw and gzipped file sizes side by side, like the
table in the TensorFlow model-optimisation pruning guide (baseline, pruned, pruned +
quantised). It also holds the small helpers that turn ``(x, y)`` tuples or ``tf.data``
datasets into arrays and labels into class ids, which :mod:`surgery.sensitivity` shares.
"""
from __future__ import annotations

import gzip
import logging
import os
import warnings
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Union

import numpy as np

from surgery.pipeline.atomic import write_atomically  # noqa: F401  (re-exported)
from surgery._backend import keras, tf

logger = logging.getLogger(__name__)

QUANTIZE_MODES = (None, "dynamic", "int8")
#: evaluations with more examples than this show a tqdm progress bar
PROGRESS_MIN_EXAMPLES = 300
#: examples drawn from ``representative_data`` to calibrate an int8 export
DEFAULT_CALIBRATION_EXAMPLES = 200

RepresentativeData = Union[tf.data.Dataset, np.ndarray, Callable[[], Iterable[Any]]]
Data = Union[tuple, tf.data.Dataset]


# ----------------------------------------------------------------------------- helpers


def _first(element: Any) -> Any:
    """``x`` of an ``(x, y)`` / ``(x, y, w)`` element, or the element itself."""
    if isinstance(element, (tuple, list)):
        if not element:
            raise ValueError("representative_data yielded an empty tuple; expected x or (x, y)")
        return element[0]
    if isinstance(element, dict) and "x" in element:
        return element["x"]
    return element


def data_arrays(data: Data, limit: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` numpy arrays from an ``(x, y)`` tuple or a dataset of ``(x, y)`` batches.

    ``limit`` caps the number of examples.

    Example::

        x, y = data_arrays(splits.test)           # or data_arrays((x, y))
    """
    if isinstance(data, tf.data.Dataset):
        xs, ys, count = [], [], 0
        for element in data:
            if not isinstance(element, (tuple, list)) or len(element) < 2:
                raise ValueError("the dataset must yield (x, y) batches with labels y; got "
                                 f"elements of type {type(element).__name__}")
            xs.append(np.asarray(element[0]))
            ys.append(np.asarray(element[1]))
            count += len(xs[-1])
            if limit is not None and count >= limit:
                break
        if not xs:
            raise ValueError("the dataset is empty")
        x, y = np.concatenate(xs), np.concatenate(ys)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = np.asarray(data[0]), np.asarray(data[1])
        if len(x) != len(y):
            raise ValueError(f"x and y hold different numbers of examples: {len(x)} and "
                             f"{len(y)}")
    else:
        raise ValueError("data must be an (x, y) tuple of arrays or a tf.data.Dataset of "
                         f"(x, y) batches, got {type(data).__name__}")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x, y


def class_ids(y: np.ndarray) -> np.ndarray:
    """Integer class ids from one-hot (or probability) rows or from integer labels.

    Example::

        class_ids(np.eye(3)[[2, 0]])     # -> array([2, 0])
    """
    y = np.asarray(y)
    if y.ndim >= 2 and y.shape[-1] > 1:
        return np.argmax(y, axis=-1).reshape(len(y))
    return y.reshape(len(y)).astype(np.int64)


def _progress(iterable: Iterable, total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm  # imported lazily: only evaluation loops need it

    return tqdm(iterable, total=total, desc=desc, unit="ex", leave=False,
                disable=not enabled or total <= PROGRESS_MIN_EXAMPLES)


def _representative_examples(data: RepresentativeData, limit: int) -> Iterator[list]:
    """Single-example float32 batches ``[x[None]]`` for the converter's calibration."""
    if isinstance(getattr(data, "train", None), tf.data.Dataset):  # data_generator.Splits
        data = data.train
    if callable(data) and not isinstance(data, tf.data.Dataset):
        yielded = 0
        for element in data():
            if yielded >= limit:
                return
            x = _first(element)
            yield [np.asarray(x, np.float32)]
            yielded += 1
        return
    if isinstance(data, tf.data.Dataset):
        batches: Iterable[Any] = (_first(e) for e in data)
    else:
        batches = [_first(data) if isinstance(data, (tuple, list)) else data]
    yielded = 0
    for batch in batches:
        for example in np.asarray(batch, np.float32):
            if yielded >= limit:
                return
            yield [example[np.newaxis]]
            yielded += 1
    if yielded == 0:
        raise ValueError("representative_data holds no examples")


def _write_bytes(path: str, content: bytes) -> str:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())

    return write_atomically(path, write)


# ----------------------------------------------------------------------------- export


def export_tflite(model: keras.Model, path: str, quantize: Optional[str] = None,
                  representative_data: Optional[RepresentativeData] = None, *,
                  calibration_examples: int = DEFAULT_CALIBRATION_EXAMPLES) -> str:
    """Convert ``model`` to TensorFlow Lite and write it to ``path`` atomically.

    Args:
        model: a (tf-keras) Keras model.
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

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "int8":
        converter.representative_dataset = lambda: _representative_examples(
            representative_data, calibration_examples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with warnings.catch_warnings():
        # int8 inputs: the converter asks for input statistics that the calibration gives
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        content = converter.convert()
    _write_bytes(path, content)
    logger.info("wrote %s (%s, %d bytes)", path, quantize or "float32", len(content))
    return os.fspath(path)


# ----------------------------------------------------------------------------- running


def _interpreter(path: str):
    """A TFLite interpreter for ``path``: LiteRT's when installed, else ``tf.lite``'s."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no TFLite file at {path!r}; write one with export_tflite()")
    try:
        from ai_edge_litert.interpreter import Interpreter  # type: ignore
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
    for example in _progress(x, len(x), progress, "tflite"):
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

        assert surgery.export.tflite_input_dtype("model_int8.tflite") == np.int8
    """
    return _Runner(path).input_dtype


# ----------------------------------------------------------------------------- sizes


def size_table(entries: Mapping[str, str], compresslevel: int = 9) -> list[dict]:
    """Raw and gzipped sizes of files, one row per ``label -> path`` entry, in order.

    Each row: ``label``, ``path``, ``bytes``, ``gzip_bytes`` (``len(gzip.compress(data))``:
    gzip is a fair proxy for what a download or an app bundle costs, and it shows the
    zeros that sparse training leaves, which a raw size hides) and ``relative`` (gzipped
    size over the first row's).

    Example::

        rows = surgery.size_table({"baseline": "base.tflite", "pruned": "pruned.tflite",
                                   "pruned + int8": "pruned_int8.tflite"})
        print(surgery.size_table_markdown(rows))
    """
    rows: list[dict] = []
    for label, path in entries.items():
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"size_table: no file at {path!r} (entry {label!r})")
        with open(path, "rb") as f:
            content = f.read()
        rows.append(dict(label=str(label), path=path, bytes=len(content),
                         gzip_bytes=len(gzip.compress(content, compresslevel=compresslevel))))
    if rows:
        first = rows[0]["gzip_bytes"] or 1
        for row in rows:
            row["relative"] = row["gzip_bytes"] / first
    return rows


def _human(n: int) -> str:
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def size_table_markdown(rows: list[dict]) -> str:
    """A Markdown table of :func:`size_table` rows.

    Example::

        print(surgery.size_table_markdown(surgery.size_table({"baseline": "base.tflite"})))
        # | model | size | gzipped | gzipped vs first |
        # |---|---:|---:|---:|
        # | baseline | 64.77 KB (64772 B) | 58.10 KB (58101 B) | 1.00x |
    """
    lines = ["| model | size | gzipped | gzipped vs first |", "|---|---:|---:|---:|"]
    for row in rows:
        label = str(row["label"]).replace("|", "\\|")
        lines.append(f"| {label} | {_human(row['bytes'])} ({row['bytes']} B) | "
                     f"{_human(row['gzip_bytes'])} ({row['gzip_bytes']} B) | "
                     f"{row.get('relative', 1.0):.2f}x |")
    return "\n".join(lines)


__all__ = ["export_tflite", "tflite_predict", "evaluate_tflite", "tflite_input_dtype",
           "size_table", "size_table_markdown", "data_arrays", "class_ids",
           "write_atomically"]
