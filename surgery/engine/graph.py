"""One model's graph, resolved once.

This module owns :class:`ModelGraph`: a functional model together with the graph adapter
of the Keras generation that built it (:mod:`~surgery.engine.keras2` or
:mod:`~surgery.engine.keras3`), answering the adapter's questions about that one model:
its calls in topological order, the calls of a layer, the readers of a call's outputs, its
inputs and outputs, a probe model to internal tensors. Only the public functions call
:func:`resolve` (it refuses anything but a Keras model with an error naming the function);
the stages below them — groups, zeroing, FLOPs, criteria, allocation, apply, verify —
take the resolved graph. Besides :mod:`~surgery.engine.adapters`, only this module asks
which generation built a model.

Example:
    >>> from surgery._backend import keras
    >>> x = keras.Input((4,)); m = keras.Model(x, keras.layers.Dense(2, name="d")(x))
    >>> graph = resolve(m)
    >>> graph.keras3, [n.layer.name for n in graph.calls()], resolve(graph) is graph
    (False, ['d'], True)
"""
from __future__ import annotations

import os
from types import ModuleType
from typing import Any, Callable, Union

from surgery.engine.adapters import adapter_for
from surgery.errors import SurgeryError


class ModelGraph:
    """A model and its graph adapter; every method asks the adapter about this model.

    Attributes:
        model: the Keras model (tf-keras or Keras 3).
        adapter: its graph adapter module.
    """

    __slots__ = ("model", "adapter")

    def __init__(self, model, adapter: ModuleType = None):
        self.model = model
        self.adapter = adapter or adapter_for(model)

    def __repr__(self) -> str:
        return f"ModelGraph({self.model.name!r}, {self.adapter.__name__.rsplit('.', 1)[-1]})"

    @property
    def keras3(self) -> bool:
        """Whether Keras 3 (any backend) built the model; else tf-keras."""
        return self.adapter.__name__.endswith("keras3")

    @property
    def backend(self) -> str:
        """``"keras2"`` for a tf-keras model, else the Keras 3 backend's name."""
        return self.adapter.backend_name()

    def require_functional(self) -> "ModelGraph":
        """This graph; :class:`~surgery.errors.SurgeryError` unless the model is functional
        or Sequential (a subclassed model has no graph to cut)."""
        self.adapter.require_functional(self.model)
        return self

    def nodes(self) -> list:
        """The calls in topological order, the models' input nodes included."""
        return self.adapter.nodes(self.model)

    def calls(self) -> list:
        """The calls in topological order, without the input nodes."""
        return [n for n in self.nodes() if not n.is_input]

    def nodes_of(self, layer) -> list:
        """The calls of ``layer`` in this model."""
        return [n for n in self.nodes() if n.layer is layer and not n.is_input]

    def consumers(self, node) -> list:
        """The calls that read an output of ``node``."""
        outs = set(node.output_keys)
        return [n for n in self.nodes() if not n.is_input and outs & set(n.input_keys)]

    def inputs(self) -> list:
        return self.adapter.inputs(self.model)

    def outputs(self) -> list:
        return self.adapter.outputs(self.model)

    def input_names(self) -> list:
        return self.adapter.input_names(self.model)

    def output_layer(self):
        """The layer (or operation) that makes the first output."""
        return self.adapter.output_layer(self.model)

    def key(self, tensor) -> int:
        """The key under which :meth:`walk` files ``tensor``'s value."""
        return self.adapter.key(tensor)

    def is_nested(self, layer) -> bool:
        """Whether ``layer`` is itself a model (nested in this one)."""
        return self.adapter.is_nested(layer)

    def moments(self, tensor, axes: tuple) -> tuple:
        """Symbolic per-channel count, mean and sum of squared deviations of an internal
        tensor over ``axes`` (see the adapters' ``moments``)."""
        return self.adapter.moments(tensor, axes)

    def submodel(self, tensors: list):
        """A model from this model's inputs to the given internal tensors (a probe)."""
        return self.adapter.submodel(self.model, tensors)

    def walk(self, visit: Callable, start: Callable) -> dict:
        """Every call once in topological order (see the adapters' ``walk``)."""
        return self.adapter.walk(self.model, visit, start)

    def nested(self, layer) -> "ModelGraph":
        """The graph of ``layer``, a model nested in this one (same adapter)."""
        return ModelGraph(layer, self.adapter)

    def with_model(self, model) -> "ModelGraph":
        """The graph of another model of the same generation (a copy or a cut of this one)."""
        return ModelGraph(model, self.adapter)


def resolve(model: Union[Any, ModelGraph], function: str = "surgery") -> ModelGraph:
    """The :class:`ModelGraph` of ``model``; ``model`` itself when it is one already.
    :class:`~surgery.errors.SurgeryError` naming ``function`` for ``None``, a path, or
    anything but a Keras model (tf-keras / Keras 2, or Keras 3 on any backend).

    Example::

        resolve("model.h5", "plan")  # SurgeryError: ... keras.models.load_model(...)
    """
    if isinstance(model, ModelGraph):
        return model
    if model is None:
        raise SurgeryError(f"{function}(model=None): model must be a keras.Model; build one, "
                           "or load a saved one with keras.models.load_model(path)")
    if isinstance(model, (str, bytes, os.PathLike)):
        raise SurgeryError(
            f"{function}(model={os.fsdecode(model)!r}): model must be a keras.Model, not a "
            "path; load it first with keras.models.load_model(path, compile=False)")
    try:
        return ModelGraph(model)
    except SurgeryError:
        raise SurgeryError(f"{function}(model=...): model must be a keras.Model, got "
                           f"{type(model).__name__}; build it (tf-keras or Keras 3) with the "
                           "Keras functional API or load it with "
                           "keras.models.load_model(path)") from None
