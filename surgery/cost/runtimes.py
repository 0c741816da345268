"""The runtimes a model's latency is measured in, each behind one small interface.

This module owns :class:`Runtime` and its three kinds: ``onnxruntime`` (the default: the
model exported with :func:`surgery.export_onnx` — tf2onnx for tf-keras, ``model.export``
for Keras 3 — and run by ONNX Runtime's CPU provider with ``intra_op_num_threads`` and
no spin-waiting between runs), ``tflite`` (converted as :func:`surgery.export_tflite`
does, run by the TFLite interpreter with its default XNNPACK delegate and
``num_threads``) and ``tensorflow`` (the Keras call
under ``tf.function``; on Keras 3's JAX or PyTorch backend, the backend's compiled
``predict_on_batch``). A runtime turns a Keras model into zero-argument *runners*, one
call of the model each on a fixed random batch: one runner for a whole model, or with
``branches=True`` one per input→output branch of a model made of independent micro-models
(ONNX Runtime converts such a model once and cuts each branch out of the graph, without
the layout transposes the converter puts at a graph's edges). :func:`get_runtime` checks
the name and that the runtime is installed.

>>> get_runtime("tensorflow").name
'tensorflow'
>>> get_runtime("openvino")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
surgery.errors.SurgeryError: runtime='openvino' is unknown; ...
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import tempfile
import warnings
from typing import Any, Callable, List, Optional

import numpy as np

from surgery._backend import tf
from surgery.cost.converted import converted, model_key
from surgery.engine.adapters import is_keras3, keras_of
from surgery.errors import SurgeryError
import surgery.export.onnx as onnx_export
from surgery.export.tflite import _convert

logger = logging.getLogger(__name__)

Runner = Callable[[], Any]


_is_keras3 = is_keras3
_keras_of = keras_of


def _batch(shape, batch: int, seed: int = 0) -> np.ndarray:
    if any(d is None for d in shape):
        raise SurgeryError(
            f"latency_target: an input of shape {(None,) + tuple(shape)} has axes of any "
            "length (a token sequence), and latency is timed at one shape; plan with "
            "params_target= or flops_target=, or build the model with a fixed length")
    dims = [batch] + [int(d) for d in shape]
    return np.random.default_rng(seed).random(dims, dtype=np.float32)


def _branch_models(model) -> list:
    """One Keras model per input→output pair of ``model`` (input k feeds output k)."""
    keras = _keras_of(model)
    return [keras.Model(i, o) for i, o in zip(model.inputs, model.outputs)]


@contextlib.contextmanager
def _environment(**values: str):
    """Environment variables set for the duration of a ``with`` block, then restored."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Runtime:
    """A named runtime: ``package`` must be importable; :meth:`runners` does the work."""

    name = ""
    package = ""
    install = ""

    def check(self) -> "Runtime":
        if importlib.util.find_spec(self.package) is None:
            raise SurgeryError(f"runtime={self.name!r} needs the `{self.package}` package, "
                               f"which is not installed: {self.install}; or pass another "
                               f"runtime= ({', '.join(RUNTIMES)})")
        return self

    def version(self, model=None) -> str:
        """What decides the kernels: the runtime's version (and the converter's)."""
        return importlib.import_module(self.package).__version__

    def runners(self, model, batch: int, threads: int, branches: bool = False,
                cache_folder: Optional[str] = None) -> List[Runner]:  # pragma: no cover
        raise NotImplementedError

    def _converted(self, model, convert: Callable[[], bytes], suffix: str,
                   cache_folder: Optional[str]) -> bytes:
        """``convert()``, or with ``cache_folder`` the file an earlier call stored there
        for this model, weights and runtime version."""
        if cache_folder is None:
            return convert()
        return converted(model_key(model, self.version(model)), convert, suffix,
                         cache_folder)


#: changes when what :func:`surgery.export_onnx` writes changes (2: ``Erfc`` rewritten; 3:
#: LayerNormalization chains fused),
#: so files converted before are not read from a cost cache
ONNX_EXPORT_REVISION = 3


class OnnxRuntime(Runtime):
    name, package = "onnxruntime", "onnxruntime"
    install = "pip install 'keras-surgery[onnx]'"

    def version(self, model=None) -> str:
        import onnxruntime  # lazy: an optional runtime (the onnx extra)

        if model is not None and _is_keras3(model):
            keras3 = keras_of(model)
            return f"ort{onnxruntime.__version__}-keras{keras3.__version__}-" \
                   f"{keras3.backend.backend()}-x{ONNX_EXPORT_REVISION}"
        import tf2onnx  # lazy: an optional converter (the onnx extra)

        return f"ort{onnxruntime.__version__}-tf2onnx{tf2onnx.__version__}-" \
               f"x{ONNX_EXPORT_REVISION}"

    def session(self, proto: bytes, threads: int):
        import onnxruntime  # lazy: an optional runtime (the onnx extra)

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # after a run, ORT's pool threads spin waiting for the next one: timed in turn with
        # another session (as every comparison here is), they take the cores it needs
        # (at batch 1, pruned MobileNetV2 timed 1.6x the original's time)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(proto, options,
                                            providers=["CPUExecutionProvider"])

    @staticmethod
    def export(model) -> bytes:
        if _is_keras3(model):  # Keras 3 exports only a model that has been called
            xs = [_batch(t.shape[1:], 1) for t in model.inputs]
            model(xs if len(xs) > 1 else xs[0], training=False)
        with tempfile.TemporaryDirectory(prefix="surgery-cost-") as folder:
            try:  # without tf2onnx's deep copy of its graph before every optimiser pass
                with _environment(TF2ONNX_CATCH_ERRORS="FALSE"):  # (about 1 s a model)
                    path = onnx_export.export_onnx(model, os.path.join(folder, "m.onnx"))
            except Exception:  # an optimiser pass failed: convert as tf2onnx does by default
                logger.debug("tf2onnx without caught optimiser errors failed; converting "
                             "again with them caught", exc_info=True)
                path = onnx_export.export_onnx(model, os.path.join(folder, "m.onnx"))
            with open(path, "rb") as f:
                return f.read()

    def _run(self, session, feeds: dict) -> Runner:
        names = [o.name for o in session.get_outputs()]
        return lambda: session.run(names, feeds)

    def runners(self, model, batch, threads, branches=False, cache_folder=None):
        data = self._converted(model, lambda: self.export(model), "onnx", cache_folder)
        if not branches:
            session = self.session(data, threads)
            feeds = {i.name: _batch(t.shape[1:], batch)
                     for i, t in zip(session.get_inputs(), model.inputs)}
            return [self._run(session, feeds)]
        import onnx  # lazy: an optional package (the onnx extra)
        from onnx.utils import Extractor

        # typed value infos first (a Shape node's output is int64), then float for the rest
        proto = onnx.shape_inference.infer_shapes(onnx.load_from_string(data))
        graph = proto.graph
        known = {v.name for v in list(graph.value_info) + list(graph.input)
                 + list(graph.output)}
        for node in graph.node:  # the extractor needs a value info for every cut point
            for name in list(node.input) + list(node.output):
                if name and name not in known:
                    graph.value_info.append(onnx.helper.make_tensor_value_info(
                        name, onnx.TensorProto.FLOAT, None))
                    known.add(name)
        consumers: dict = {}
        for node in graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        producer = {o: node for node in graph.node for o in node.output}
        extractor = Extractor(proto)
        result = []
        for inp, out, tensor in zip(graph.input, graph.output, model.inputs):
            shape = [batch] + [int(d) for d in tensor.shape[1:]]
            start, end = inp.name, out.name
            users = consumers.get(start, [])
            if len(users) == 1 and users[0].op_type == "Transpose":  # NHWC -> NCHW
                perm = [a.ints for a in users[0].attribute if a.name == "perm"][0]
                start, shape = users[0].output[0], [shape[p] for p in perm]
            if end in producer and producer[end].op_type == "Transpose":
                end = producer[end].input[0]
            sub = extractor.extract_model([start], [end])
            session = self.session(sub.SerializeToString(), threads)
            result.append(self._run(session, {session.get_inputs()[0].name:
                                              _batch(shape[1:], batch)}))
        return result


class TFLiteRuntime(Runtime):
    name, package = "tflite", "tensorflow"
    install = "pip install tensorflow"

    def version(self, model=None) -> str:
        return f"tflite{tf.__version__}-xnnpack"

    def _runner(self, model, batch, threads, cache_folder=None) -> Runner:
        content = self._converted(model, lambda: _convert(model, lambda converter: None),
                                  "tflite", cache_folder)
        with warnings.catch_warnings():  # tf.lite.Interpreter warns that it is deprecated
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(model_content=content, num_threads=threads)
        details = interpreter.get_input_details()
        for d in details:
            interpreter.resize_tensor_input(d["index"], [batch] + list(d["shape"][1:]))
        interpreter.allocate_tensors()
        feeds = [(d["index"], _batch(d["shape"][1:], batch)) for d in details]
        out = interpreter.get_output_details()[0]["index"]

        def run():
            for index, x in feeds:
                interpreter.set_tensor(index, x)
            interpreter.invoke()
            return interpreter.get_tensor(out)
        return run

    def runners(self, model, batch, threads, branches=False, cache_folder=None):
        models = _branch_models(model) if branches else [model]
        return [self._runner(m, batch, threads, cache_folder) for m in models]


class TensorFlowRuntime(Runtime):
    name, package = "tensorflow", "tensorflow"
    install = "pip install tensorflow"

    def version(self, model=None) -> str:
        if model is not None and _is_keras3(model):
            keras3 = keras_of(model)
            return f"keras{keras3.__version__}-{keras3.backend.backend()}-tf{tf.__version__}"
        return f"tf{tf.__version__}-tfkeras"

    def _runner(self, model, batch, threads) -> Runner:
        xs = [_batch(t.shape[1:], batch) for t in model.inputs]
        if _is_keras3(model):
            if keras_of(model).backend.backend() != "tensorflow":
                return lambda: model.predict_on_batch(xs if len(xs) > 1 else xs[0])
        tensors = [tf.constant(x) for x in xs]
        forward = tf.function(lambda *t: model(list(t) if len(t) > 1 else t[0],
                                               training=False), autograph=False)
        return lambda: forward(*tensors)

    def runners(self, model, batch, threads, branches=False, cache_folder=None):
        try:  # TensorFlow fixes its pools at first use: set them before, never after
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:
            pass
        models = _branch_models(model) if branches else [model]
        return [self._runner(m, batch, threads) for m in models]


RUNTIMES = {r.name: r for r in (OnnxRuntime(), TFLiteRuntime(), TensorFlowRuntime())}


def get_runtime(name: str) -> Runtime:
    """The runtime called ``name``, checked to be installed; :class:`SurgeryError`
    naming ``runtime=`` and the choices otherwise."""
    if not isinstance(name, str) or name not in RUNTIMES:
        raise SurgeryError(f"runtime={name!r} is unknown; pass one of "
                           f"{', '.join(repr(r) for r in RUNTIMES)} (the runtime you deploy "
                           "to: 'onnxruntime' by default)")
    return RUNTIMES[name].check()
