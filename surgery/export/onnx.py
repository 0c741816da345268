"""ONNX: converting Keras models of either generation, and running the files.

This module owns :func:`export_onnx`, which writes a model as an ``.onnx`` file
atomically — tf-keras (Keras 2) models through ``tf2onnx.convert.from_keras``, Keras 3
models through Keras 3's own ``model.export(path, format="onnx")`` on the TensorFlow and
PyTorch backends (on JAX through ``jax2onnx`` where it is installed, else the same model
exported by tf2onnx in a TensorFlow-backend process) — and can check
the file against the Keras model on given inputs before publishing it; and
:func:`onnx_predict`, which runs a file with ONNX Runtime. Before the file is published,
nodes no ONNX opset defines that the converters emit (``Erfc``, from TensorFlow's exact
GELU) are rewritten in ONNX operators, and Keras's LayerNormalization chains become
``LayerNormalization`` nodes (:mod:`surgery.export.onnx_graph`). ``onnx``,
``onnxruntime`` and ``tf2onnx`` (the ``onnx`` extra) are imported only when these functions run.

>>> import tempfile
>>> import numpy as np
>>> from surgery._backend import keras
>>> x = keras.Input((3,)); tiny = keras.Model(x, keras.layers.Dense(2)(x))
>>> folder = tempfile.TemporaryDirectory()
>>> inputs = np.arange(12, dtype=np.float32).reshape(4, 3)
>>> path = export_onnx(tiny, folder.name + "/tiny.onnx", verify_with=inputs)
>>> bool(np.abs(onnx_predict(path, inputs) - tiny.predict(inputs, verbose=0)).max() <= 1e-4)
True
>>> folder.cleanup()
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Optional, Sequence, Union

import numpy as np

from surgery._backend import tf
from surgery.atomic import write_atomically
from surgery.engine.adapters import keras_of
from surgery.engine.graph import resolve
from surgery.errors import SurgeryError
from surgery.export import onnx_graph
from surgery.export.saving import save_model_atomic

logger = logging.getLogger(__name__)

#: largest tolerated max-abs difference between ONNX Runtime's and Keras's outputs
DEFAULT_ATOL = 1e-4
#: examples ONNX Runtime runs at a time in :func:`onnx_predict`
DEFAULT_BATCH_SIZE = 256

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
               "tensor(float16)": np.float16, "tensor(int64)": np.int64,
               "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8}

Arrays = Union[np.ndarray, Sequence[np.ndarray]]


def _require(module: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise SurgeryError(
            f"{what} needs the `{module}` package, which is not installed; install the ONNX "
            "extra: pip install 'keras-surgery[onnx]' (onnx, onnxruntime and tf2onnx, "
            "pinned in requirements.txt).")


def _rewritten(path: str, opset: Optional[int]) -> None:
    """The converted file at ``path`` with :mod:`surgery.export.onnx_graph`'s rewrites:
    ``Erfc`` nodes as ``1 - Erf``, and (unless an ``opset`` below 17 was asked for) Keras's
    LayerNormalization chains as ``LayerNormalization`` nodes."""
    import onnx  # lazy, with the rest of the ONNX extra

    proto = onnx.load(path)
    erfc = onnx_graph.without_erfc(proto)
    fused = onnx_graph.fused_layer_norms(proto) \
        if opset is None or opset >= onnx_graph.LAYER_NORM_OPSET else 0
    if erfc or fused:
        onnx.save(proto, path)
        logger.debug("%s: %d Erfc nodes rewritten as 1 - Erf, %d LayerNormalization chains "
                     "fused", path, erfc, fused)


def _keras2_onnx(model: Any, target: str, opset: Optional[int]) -> None:
    """tf-keras ``model`` to ONNX with tf2onnx, batch dimension left free."""
    _require("tf2onnx", "export_onnx(model=<a tf-keras model>)")
    import tf2onnx  # lazy: slow to import, and only ONNX export needs it

    specs = tuple(tf.TensorSpec((None, *tuple(t.shape)[1:]), t.dtype, name=name)
                  for t, name in zip(model.inputs, model.input_names))
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=specs, opset=opset)
    with open(target, "wb") as f:
        f.write(proto.SerializeToString())


def _keras3_onnx(model: Any, target: str, opset: Optional[int]) -> None:
    """Keras 3 ``model`` to ONNX with ``model.export(format="onnx")``."""
    backend = keras_of(model).backend.backend()
    if backend == "jax" and importlib.util.find_spec("jax2onnx") is None:
        _jax_onnx_through_tensorflow(model, target, opset)
        return
    needs = {"tensorflow": "tf2onnx", "jax": "jax2onnx", "torch": "torch"}.get(backend)
    if needs is None:
        raise SurgeryError(
            f"export_onnx(model=...) cannot export from Keras 3's {backend!r} backend; "
            "start Python with KERAS_BACKEND=tensorflow or KERAS_BACKEND=torch.")
    if importlib.util.find_spec(needs) is None:
        extra = ("pip install jax2onnx (not part of the onnx extra)" if backend == "jax"
                 else "pip install 'keras-surgery[onnx]'")
        raise SurgeryError(
            f"export_onnx(model=...) on Keras 3's {backend!r} backend needs the `{needs}` "
            f"package, which is not installed: {extra}; or start Python with "
            "KERAS_BACKEND=tensorflow (save the model as .keras and load it there).")
    options = {} if opset is None else {"opset_version": opset}
    with _tensors_as_constants(model if backend == "tensorflow" else None):
        model.export(target, format="onnx", verbose=False, **options)


@contextlib.contextmanager
def _tensors_as_constants(model: Any):
    """While ``model`` is exported, every eager tensor a layer holds as an attribute (not a
    variable: keras-hub's ``ViTPatchingAndEmbedding.position_ids``) is its NumPy value:
    traced, a tensor is captured and tf2onnx 1.17 makes it an extra graph *input* the
    file cannot run without ("Required inputs ... position_embedding/Less/x:0"); an array
    becomes a constant."""
    swapped = []
    for layer in [] if model is None else model._flatten_layers(include_self=True):
        for name, value in list(vars(layer).items()):
            if isinstance(value, tf.Tensor) and not isinstance(value, tf.Variable) \
                    and hasattr(value, "numpy"):
                swapped.append((layer, name, value))
                object.__setattr__(layer, name, value.numpy())
    try:
        yield
    finally:
        for layer, name, value in swapped:
            object.__setattr__(layer, name, value)


#: what the TensorFlow-backend process of :func:`_jax_onnx_through_tensorflow` runs
_TF_EXPORT = """
import sys
import keras
import numpy as np
import surgery  # noqa: F401  (registers the project's serializable classes)
model = keras.models.load_model(sys.argv[1], compile=False)
model.predict([np.zeros((1, *t.shape[1:]), t.dtype) for t in model.inputs], verbose=0)
options = {} if sys.argv[3] == "-" else {"opset_version": int(sys.argv[3])}
model.export(sys.argv[2], format="onnx", verbose=False, **options)
"""

#: seconds the TensorFlow-backend export process may take
TF_EXPORT_TIMEOUT_S = 900


def _jax_onnx_through_tensorflow(model: Any, target: str, opset: Optional[int]) -> None:
    """A JAX-backend Keras 3 ``model`` to ONNX through tf2onnx, in a TensorFlow-backend
    process. The SavedModel that ``ExportArchive`` writes on JAX cannot be converted:
    jax2tf (JAX 0.10) serialises the whole call as one StableHLO ``XlaCallModule`` op
    (its non-native mode is gone) and tf2onnx 1.17 has no converter for that op. A ``.keras``
    file is backend-independent, so the same model, loaded by Keras 3 on TensorFlow, is
    exported there with tf2onnx (``model.export(format="onnx")``); the caller checks the
    file against this model with ONNX Runtime."""
    _require("tf2onnx", "export_onnx(model=<a Keras 3 model on JAX>)")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_USE_LEGACY_KERAS", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="surgery-jax-onnx-") as folder:
        saved = save_model_atomic(model, os.path.join(folder, "model.keras"))
        logger.info("export_onnx on JAX: converting %s with tf2onnx in a TensorFlow-backend "
                    "process", model.name)
        proc = subprocess.run(
            [sys.executable, "-c", _TF_EXPORT, saved, target, "-" if opset is None
             else str(opset)], env=env, capture_output=True, text=True,
            timeout=TF_EXPORT_TIMEOUT_S)
    if proc.returncode != 0 or not os.path.isfile(target):
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise SurgeryError(
            "export_onnx(model=<a Keras 3 model on JAX>): the TensorFlow-backend export "
            f"failed ({lines[-1] if lines else f'exit status {proc.returncode}'}); save the "
            "model as .keras and export it with KERAS_BACKEND=tensorflow, or pip install "
            "jax2onnx.")


def _outputs(values: Any) -> list[np.ndarray]:
    if isinstance(values, (list, tuple)):
        return [np.asarray(v) for v in values]
    if isinstance(values, dict):
        return [np.asarray(v) for v in values.values()]
    return [np.asarray(values)]


def _check(model: Any, onnx_path: str, x: Arrays, atol: float, path: str) -> float:
    """Max abs difference between the ONNX file's and the model's outputs on ``x``."""
    expected = _outputs(model.predict(x, verbose=0))
    got = _outputs(onnx_predict(onnx_path, x))
    if len(got) != len(expected) or any(g.shape != e.shape for g, e in zip(got, expected)):
        raise SurgeryError(
            f"export_onnx(verify_with=...): the ONNX file gives outputs of shapes "
            f"{[g.shape for g in got]}, the Keras model {[e.shape for e in expected]}; "
            f"nothing was written to {path!r}.")
    error = max(float(np.max(np.abs(g.astype(np.float64) - e))) if e.size else 0.0
                for g, e in zip(got, expected))
    if not error <= atol:  # also catches NaN
        raise SurgeryError(
            f"export_onnx(verify_with=...): the ONNX file's outputs differ from the Keras "
            f"model's by up to {error:.3g} (more than atol={atol:g}); nothing was written "
            f"to {path!r}. Pass a larger atol= if that drift is acceptable, or export with "
            "another Keras backend or opset=.")
    return error


def export_onnx(model: Any, path: str, *, verify_with: Optional[Arrays] = None,
                atol: float = DEFAULT_ATOL, opset: Optional[int] = None) -> str:
    """Convert ``model`` to ONNX and write it to ``path`` atomically.

    Args:
        model: a tf-keras (Keras 2) model, or a Keras 3 model on any backend (on JAX
            with ``jax2onnx`` when it is installed, else through tf2onnx in a
            TensorFlow-backend process: :func:`_jax_onnx_through_tensorflow`).
        path: the ``.onnx`` file to write; its folder is created if needed.
        verify_with: inputs (an array, or a list of arrays for several inputs) to run
            through both the ONNX file (ONNX Runtime) and the Keras model before the file
            is written; if any output differs by more than ``atol`` the file is not
            written and a :class:`~surgery.errors.SurgeryError` is raised.
        atol: the largest tolerated max-abs output difference for ``verify_with``.
        opset: the ONNX opset; ``None`` takes the converter's default.

    Returns:
        ``path``.

    Raises:
        SurgeryError: the converter is not installed, the backend cannot export ONNX, or
            the check on ``verify_with`` failed.

    Example::

        surgery.export_onnx(pruned, "pruned.onnx", verify_with=x_test[:32])
        probs = surgery.onnx_predict("pruned.onnx", x_test)
    """
    if atol < 0:
        raise SurgeryError(f"export_onnx(atol=...) must be >= 0, got {atol}")
    keras3 = resolve(model).keras3
    if verify_with is not None:
        _require("onnxruntime", "export_onnx(verify_with=...)")

    def write(tmp: str) -> None:
        with tempfile.TemporaryDirectory(prefix="surgery-onnx-") as folder:
            staged = os.path.join(folder, "model.onnx")
            (_keras3_onnx if keras3 else _keras2_onnx)(model, staged, opset)
            _rewritten(staged, opset)
            if verify_with is not None:
                error = _check(model, staged, verify_with, atol, os.fspath(path))
                logger.info("%s: ONNX Runtime matches Keras to %.3g", path, error)
            shutil.copyfile(staged, tmp)

    write_atomically(path, write)
    logger.info("wrote %s (ONNX, %d bytes)", path, os.path.getsize(path))
    return os.fspath(path)


def onnx_predict(path: str, x: Arrays, *, batch_size: int = DEFAULT_BATCH_SIZE
                 ) -> Union[np.ndarray, list[np.ndarray]]:
    """Run the ``.onnx`` file at ``path`` on the inputs ``x`` with ONNX Runtime (CPU).

    ``x`` is a batch of examples (or a list of batches, one per model input), run
    ``batch_size`` examples at a time. Models with several outputs give a list.

    Example::

        probs = surgery.onnx_predict("pruned.onnx", x_test)
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no ONNX file at {path!r}; write one with export_onnx()")
    if batch_size < 1:
        raise SurgeryError(f"onnx_predict(batch_size=...) must be >= 1, got {batch_size}")
    _require("onnxruntime", "onnx_predict")
    import onnxruntime  # lazy: only running ONNX files needs it

    session = onnxruntime.InferenceSession(os.fspath(path),
                                           providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    arrays = list(x) if isinstance(x, (list, tuple)) else [x]
    if len(arrays) != len(inputs):
        raise SurgeryError(f"onnx_predict(x=...): {path} takes {len(inputs)} inputs "
                           f"({[i.name for i in inputs]}), got {len(arrays)} arrays")
    arrays = [np.asarray(a, _ORT_DTYPES.get(i.type)) for a, i in zip(arrays, inputs)]
    fixed = inputs[0].shape[0] if inputs[0].shape else None
    step = fixed if isinstance(fixed, int) and fixed > 0 else batch_size
    total = len(arrays[0])
    results: list[list[np.ndarray]] = []
    for start in range(0, total, step):
        feed = {i.name: a[start:start + step] for i, a in zip(inputs, arrays)}
        results.append(session.run(None, feed))
    if not results:
        raise SurgeryError(f"onnx_predict(x=...) got no examples for {path}")
    stacked = [np.concatenate(parts) for parts in zip(*results)]
    return stacked[0] if len(stacked) == 1 else stacked


__all__ = ["export_onnx", "onnx_predict", "DEFAULT_ATOL"]
