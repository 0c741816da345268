"""What both graph adapters share.

This module owns the parts of :mod:`surgery.engine.keras2` and :mod:`surgery.engine.keras3`
that do not depend on the Keras generation: :class:`NodeBase`, the common half of an
adapter's call record; :func:`walk`, every call once in topological order;
:func:`carried`, how they copy a layer that no cut touches; :func:`input_roles`, which
call argument each tensor input of a call is; and :func:`sublayers`, the layers a layer
holds.
"""
from __future__ import annotations

import inspect
from typing import Callable, Sequence

from surgery.errors import SurgeryError


class NodeBase:
    """One call of a layer (or operation) in a model: its layer, input and output tensors.
    An adapter's subclass fills them from its generation's node and adds ``info`` and
    ``call``."""

    __slots__ = ("_node", "layer", "is_input", "inputs", "outputs", "__weakref__")

    def __init__(self, node, layer, inputs: Callable[[], Sequence], outputs: Sequence):
        self._node, self.layer, self.is_input = node, layer, node.is_input
        self.inputs = [] if node.is_input else list(inputs())  # an input node reads nothing
        self.outputs = list(outputs)

    @property
    def identity(self) -> int:
        """Tells two calls of the same layer apart."""
        return id(self._node)

    @property
    def input_keys(self) -> list:
        return [id(t) for t in self.inputs]

    @property
    def output_keys(self) -> list:
        return [id(t) for t in self.outputs]


def walk(nodes: Sequence, inputs: Sequence, visit: Callable, start: Callable) -> dict:
    """Visit every call of ``nodes`` (topological order, input nodes included) once;
    ``visit(node, inbound_values)`` returns one value for all outputs, or a list with one
    per output; ``start(tensor)`` gives the values of the model's ``inputs``. Returns
    ``{tensor key: value}``."""
    values = {id(t): start(t) for t in inputs}
    for node in nodes:
        if node.is_input:
            continue
        result = visit(node, [values.get(k) for k in node.input_keys])
        keys = node.output_keys
        if not isinstance(result, list) or len(keys) == 1 and len(result) != 1:
            result = [result] * len(keys)
        for k, value in zip(keys, result):
            values[k] = value
    return values


def own_classes(layer) -> dict:
    """``{class name: class}`` of ``layer`` and every layer inside it: the custom objects
    its config needs to be rebuilt (a custom layer class that was never registered, as in
    a script or a notebook, is still found)."""
    flatten = getattr(layer, "_flatten_layers", None)  # a Keras 3 operation has none
    inside = flatten(include_self=True) if flatten else [layer]
    return {type(l).__name__: type(l) for l in inside}


def carried(layer, new_layer: Callable):
    """A copy of a layer that no cut touches, for a rebuilt model: ``new_layer(layer)``, a
    fresh layer from its config (its weights are set later). A layer its config cannot
    rebuild (a custom layer without a complete ``get_config``) is carried over as it is
    when it holds no weights, and otherwise refused with a
    :class:`~surgery.errors.SurgeryError` naming it: carried over, it would be shared,
    weights included, with the input model, and training the copy would change the
    original."""
    try:
        new = new_layer(layer)
        if new.name == layer.name:
            return new
        err = f"its config does not keep its name '{layer.name}'"  # an incomplete config
    except Exception as error:  # noqa: BLE001 — any failure to rebuild: say which layer
        err = error
    if not getattr(layer, "weights", ()):  # nothing to share (a Keras 3 Lambda of a lambda)
        return layer
    cls = type(layer).__name__
    raise SurgeryError(
        f"layer '{layer.name}' ({cls}) cannot be rebuilt from its config ({err}); a copy "
        f"of the model would share it, weights included, with the input model. Give "
        f"{cls}.get_config() every argument its constructor takes (and register the class "
        "with keras.saving.register_keras_serializable), then plan and apply again")


def input_roles(layer, args: Sequence, kwargs: dict, inputs: Sequence,
                flatten: Callable) -> list[str]:
    """The call parameter each of a call's tensor ``inputs`` was passed as (``"query"``,
    ``"value"``, ``"attention_mask"`` for ``MultiHeadAttention``), in the order Keras
    lists them: positional arguments first, then keyword arguments by sorted name.
    ``flatten`` is the generation's ``tree.flatten``; a name is ``""`` where unknown."""
    try:
        names = [p for p in inspect.signature(layer.call).parameters
                 if p not in ("self", "args", "kwargs")]
    except (TypeError, ValueError):
        names = []
    ids = {id(t) for t in inputs}
    roles: list[str] = []
    pairs = [(names[i] if i < len(names) else "", a) for i, a in enumerate(args)]
    for name, value in pairs + sorted(kwargs.items()):
        roles += [name] * sum(1 for v in flatten(value) if id(v) in ids)
    return roles if len(roles) == len(inputs) else [""] * len(inputs)


def sublayers(layer) -> list:
    """The layers ``layer`` holds, at any depth, in the order both Keras generations
    track them (the same for two layers made from one config)."""
    flatten = getattr(layer, "_flatten_layers", None)
    return list(flatten(include_self=False)) if flatten is not None else []
