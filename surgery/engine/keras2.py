"""The Keras 2 (tf-keras) graph adapter: the only module that touches tf-keras internals.

It owns walking a functional model's nodes in topological order (``_nodes_by_depth``),
describing each call as a :class:`~surgery.engine.rules.LayerInfo` (class, config,
weights, shapes, the TF op of a ``TFOpLambda``), replaying a node with other tensors
(``map_arguments``), making fresh inputs and packing outputs the way the model nests
them, and setting many weights at once. Everything above
it (groups, surgery, zeroing, flattening, FLOPs, criteria) sees only these functions.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Iterable, Optional, Sequence

from surgery._backend import keras, tf
from surgery.errors import SurgeryError
from surgery.engine import adapter_base
from surgery.engine.rules import LayerInfo



#: the Keras module that builds this generation's models
KERAS = keras


def moments(tensor, axes: tuple) -> tuple:
    """Symbolic per-channel count, mean and sum of squared deviations of ``tensor`` over
    ``axes`` (a probe's outputs: the statistics are reduced where the model runs; the count
    is read from the tensor, whose positions may be known only when it runs)."""
    axes = list(axes)
    mean = tf.reduce_mean(tensor, axis=axes, keepdims=True)
    count = tf.reduce_sum(tf.ones_like(tensor, dtype=tf.int32), axis=axes)  # exact past 2**24
    return (count, tf.reshape(mean, [-1]), tf.reduce_sum(tf.square(tensor - mean), axis=axes))


def backend_name() -> str:
    """``"keras2"``: tf-keras runs on TensorFlow alone."""
    return "keras2"


def require_functional(model) -> None:
    """Refuse models whose graph surgery cannot see (subclassed, or never built)."""
    if not isinstance(model, keras.Model):
        raise SurgeryError(f"expected a keras.Model, got {type(model).__name__}")
    if not getattr(model, "_is_graph_network", False):
        raise SurgeryError(
            f"model '{model.name}' ({type(model).__name__}) is not a functional model: a "
            "subclassed model's graph is Python code that surgery cannot see, and a "
            "Sequential model must be built with an input shape first. Rebuild it with the "
            "functional API (keras.Input(...) → layers → keras.Model) or give the Sequential "
            "model an Input layer.")


def is_nested(layer) -> bool:
    """True for a functional model used as a layer of another model."""
    return isinstance(layer, keras.Model) and getattr(layer, "_is_graph_network", False)


def key(tensor) -> int:
    """The identity of a symbolic tensor within one model."""
    return id(tensor)


def _shape(tensor) -> tuple:
    return tuple(tensor.shape)[1:]


class Node(adapter_base.NodeBase):
    """One call of a layer in a model: its layer, input and output tensors."""

    __slots__ = ()

    def __init__(self, node):
        super().__init__(node, node.outbound_layer, lambda: node.keras_inputs,
                         tf.nest.flatten(node.outputs))

    @property
    def info(self) -> LayerInfo:
        """The call described for the layer rules (read afresh: weights may change)."""
        layer = self.layer
        return LayerInfo(
            class_name=type(layer).__name__, name=layer.name, config=layer.get_config(),
            input_shapes=[_shape(t) for t in self.inputs],
            output_shape=_shape(self.outputs[0]), op=getattr(layer, "symbol", None),
            layer=layer, load_weights=layer.get_weights,
            input_roles=adapter_base.input_roles(layer, self._node.call_args,
                                             self._node.call_kwargs, self.inputs,
                                             tf.nest.flatten))

    def call(self, layer, tensors: Sequence) -> list:
        """Call ``layer`` with this node's original arguments, its tensors replaced;
        returns the output tensors as a flat list."""
        table: dict[str, list] = {}
        for old, new in zip(self.inputs, tensors):
            table.setdefault(str(id(old)), []).append(new)
        args, kwargs = self._node.map_arguments(table)
        return tf.nest.flatten(layer(*args, **kwargs))


_NODES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def nodes(model) -> list[Node]:
    """The model's nodes in topological order (input nodes included). A functional
    model's graph never changes, so the list is computed once per model."""
    cached = _NODES.get(model)
    if cached is None:
        depth = {n: d for d, ns in model._nodes_by_depth.items() for n in ns}
        cached = [Node(n) for n in sorted(depth, key=depth.get, reverse=True)]
        _NODES[model] = cached
    return cached


def walk(model, visit: Callable[[Node, list], Any], start: Callable[[Any], Any]) -> dict:
    """Visit every node once in topological order; ``visit(node, inbound_values)`` returns
    one value for all outputs, or a list with one per output. ``start(tensor)`` gives the
    values of the model's inputs. Returns ``{tensor key: value}``."""
    return adapter_base.walk(nodes(model), model.inputs, visit, start)


def fresh_inputs(model) -> list:
    """New ``Input`` tensors like the model's, with the same names."""
    new = []
    for old in model.inputs:
        layer = old._keras_history.layer
        new.append(keras.Input(batch_shape=old.shape, dtype=old.dtype, name=layer.name,
                               sparse=getattr(layer, "sparse", False),
                               ragged=getattr(layer, "ragged", False)))
    return new


def input_names(model) -> list[str]:
    return [t._keras_history.layer.name for t in model.inputs]


def build_model(model, inputs: list, outputs: list) -> keras.Model:
    """A functional model nesting ``inputs``/``outputs`` the way ``model`` does."""
    return keras.Model(tf.nest.pack_sequence_as(model._nested_inputs, inputs),
                       tf.nest.pack_sequence_as(model._nested_outputs, outputs),
                       name=model.name)


def layer_config(layer) -> dict:
    """A layer's config (tf-keras layers' own; Keras 3's adapter reads some from their
    attributes)."""
    return layer.get_config()


def new_layer(layer, config: Optional[dict] = None):
    """A fresh layer of ``layer``'s class from ``config`` (its own config by default), its
    own classes known by name (:func:`surgery.engine.adapter_base.own_classes`)."""
    with keras.utils.custom_object_scope(adapter_base.own_classes(layer)):
        return type(layer).from_config(layer.get_config() if config is None else config)


def carried(layer):
    """A copy of a layer that no cut touches (:func:`surgery.engine.adapter_base.carried`)."""
    return adapter_base.carried(layer, new_layer)


def with_family(original, cut):
    """``cut`` itself (keras-hub models are Keras 3's)."""
    return cut


def set_weights(pairs: Iterable[tuple]) -> None:
    """Set ``(layer, weights)`` pairs in one batch (layers must be built)."""
    keras.backend.batch_set_value(
        [pair for layer, weights in pairs for pair in zip(layer.weights, weights)])


def clone(model) -> keras.Model:
    """A copy of ``model`` with its own layers and the same weights (a layer whose config
    cannot rebuild it is :func:`carried` over, shared)."""
    try:
        copy = keras.models.clone_model(model, clone_function=carried)
    except (TypeError, ValueError):  # e.g. ``0.5 * x`` in float64: clone_model recasts the
        return _replayed(model)      # constant to float32; replaying keeps the call's args
    copy.set_weights(model.get_weights())
    return copy


def _replayed(model) -> keras.Model:
    """A copy of ``model`` made by calling fresh layers with each node's own arguments."""
    built: dict = {}
    pairs: list = []

    def visit(node, tensors):
        if node.layer not in built:
            built[node.layer] = carried(node.layer)
            if built[node.layer] is not node.layer:
                pairs.append((built[node.layer], node.layer.get_weights()))
        return node.call(built[node.layer], tensors)

    inputs = fresh_inputs(model)
    start = {key(old): new for old, new in zip(model.inputs, inputs)}
    values = walk(model, visit, lambda t: start[key(t)])
    set_weights(pairs)
    return build_model(model, inputs, [values[key(t)] for t in model.outputs])


def output_layer(model):
    """The layer that makes the model's first output."""
    return model.outputs[0]._keras_history.layer


def submodel(model, tensors: list) -> keras.Model:
    """A model from ``model``'s inputs to the given internal tensors (for probing)."""
    return keras.Model(model.inputs, tensors)


def name_op(tensor, name: str) -> None:
    """Name the layer that made ``tensor`` (an op such as ``x + y``, which tf-keras names
    ``tf.__operators__.add``)."""
    tensor._keras_history.layer._name = name


def inputs(model) -> list:
    return list(model.inputs)


def outputs(model) -> list:
    return list(model.outputs)
