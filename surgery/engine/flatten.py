"""Flattening models nested inside models.

The most common way to fine-tune is ``Sequential([MobileNetV2(...), GlobalAveragePooling2D(),
Dense(10)])``: the backbone is one *layer* of the outer model, so its channels cannot be
reached by surgery. This module owns :func:`flatten_model`, which replays every functional
sub-model's layers directly in the outer graph (fresh layer copies, weights copied, names
kept unique) so the result is one flat functional model computing the same function, and
:func:`flattened`, the graph every planning stage reads (the graph itself when nothing is
nested).
"""
from __future__ import annotations

from surgery.engine.adapter_base import sublayers
from surgery.engine.graph import ModelGraph, resolve
from surgery.errors import SurgeryError


def flatten_model(model):
    """A flat functional copy of ``model`` with every nested functional model inlined.

    Example::

        model = keras.Sequential([keras.Input((32, 32, 3)),
                                  keras.applications.MobileNetV2(include_top=False,
                                                                 weights=None),
                                  keras.layers.GlobalAveragePooling2D(),
                                  keras.layers.Dense(10)])
        flat = surgery.flatten_model(model)   # MobileNetV2's layers are now reachable
    """
    return _inlined(resolve(model, "flatten_model").require_functional()).model


def _inlined(graph: ModelGraph) -> ModelGraph:
    """The graph of a flat copy of ``graph``'s model (every nested model inlined)."""
    model, adapter = graph.model, graph.adapter
    used_names: set[str] = set(graph.input_names())
    copies: list = []
    cache: dict = {}

    def copy_of(layer):
        if layer not in cache:
            held = _held_copy(layer, cache)
            if held is not None:  # called on its own too (OPT's token embedding): one copy
                cache[layer] = held
                return held
            config = dict(adapter.layer_config(layer))
            name, i = config["name"], 1
            while config["name"] in used_names:
                config["name"] = f"{name}_{i}"
                i += 1
            used_names.add(config["name"])
            cache[layer] = adapter.new_layer(layer, config)
            if hasattr(layer, "get_weights"):  # Keras 3 operations hold no weights
                copies.append((cache[layer], layer))
        return cache[layer]

    def replay(sub, inputs):
        start = {sub.key(t): new for t, new in zip(sub.inputs(), inputs)}

        def visit(node, tensors):
            if sub.is_nested(node.layer):
                return replay(sub.nested(node.layer), tensors)
            return node.call(copy_of(node.layer), tensors)

        values = sub.walk(visit, lambda t: start[sub.key(t)])
        return [values[sub.key(t)] for t in sub.outputs()]

    new_inputs = adapter.fresh_inputs(model)
    outputs = replay(graph, new_inputs)
    _refuse_shared_weights([layer for _, layer in copies])
    # each layer's weights read as it is set: all at once they would be one more whole copy
    adapter.set_weights((new, layer.get_weights()) for new, layer in copies)
    return graph.with_model(adapter.build_model(model, new_inputs, outputs))


def _held_copy(layer, cache: dict):
    """Where ``layer`` is held by a layer copied already (``cache``: original -> copy), the
    copy's layer in its place; else ``None``."""
    for original, copy in cache.items():
        inside = sublayers(original)
        if any(sub is layer for sub in inside):
            return sublayers(copy)[next(i for i, sub in enumerate(inside) if sub is layer)]
    return None


def _refuse_shared_weights(layers: list) -> None:
    """Raise where a layer reads a weight another layer owns (keras-hub's ``MaskedLMHead``
    reads its backbone's token embedding): each copy gets weights of its own, so the tie
    would be lost (and the copy's weights do not line up)."""
    owner: dict = {}
    for layer in layers:
        for weight in layer.weights:
            other = owner.setdefault(id(weight), layer)
            if other is not layer:
                name = getattr(weight, "path", weight.name)  # tf-keras: name
                raise SurgeryError(
                    f"layer '{layer.name}' ({type(layer).__name__}) reads weight '{name}' "
                    f"of layer '{other.name}', and a copy cannot keep them tied; plan and "
                    "apply the model without that layer (a keras-hub task's backbone: "
                    "surgery.plan(task.backbone, ...))")


def flattened(graph: ModelGraph) -> ModelGraph:
    """``graph`` itself when nothing is nested in its model, else the graph of a flat copy
    (:func:`flatten_model`)."""
    graph.require_functional()
    if any(graph.is_nested(layer) for layer in graph.model.layers):
        return _inlined(graph)
    return graph
