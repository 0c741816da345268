"""Flattening models nested inside models.

The most common way to fine-tune is ``Sequential([MobileNetV2(...), GlobalAveragePooling2D(),
Dense(10)])``: the backbone is one *layer* of the outer model, so its channels cannot be
reached by surgery. This module owns :func:`flatten_model`, which replays every functional
sub-model's layers directly in the outer graph (fresh layer copies, weights copied, names
kept unique) so the result is one flat functional model computing the same function.
"""
from __future__ import annotations

from surgery.engine.graph import resolve


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
    graph = resolve(model).require_functional()
    model, adapter = graph.model, graph.adapter
    used_names: set[str] = set(graph.input_names())
    copies: list = []
    cache: dict = {}

    def copy_of(layer):
        if layer not in cache:
            config = layer.get_config()
            name, i = config["name"], 1
            while config["name"] in used_names:
                config["name"] = f"{name}_{i}"
                i += 1
            used_names.add(config["name"])
            cache[layer] = adapter.new_layer(layer, config)
            if hasattr(layer, "get_weights"):  # Keras 3 operations hold no weights
                copies.append((cache[layer], layer.get_weights()))
        return cache[layer]

    def replay(sub, inputs):
        sub = resolve(sub)
        start = {sub.key(t): new for t, new in zip(sub.inputs(), inputs)}

        def visit(node, tensors):
            if sub.is_nested(node.layer):
                return replay(node.layer, tensors)
            return node.call(copy_of(node.layer), tensors)

        values = sub.walk(visit, lambda t: start[sub.key(t)])
        return [values[sub.key(t)] for t in sub.outputs()]

    new_inputs = adapter.fresh_inputs(model)
    outputs = replay(graph, new_inputs)
    adapter.set_weights(copies)
    return adapter.build_model(model, new_inputs, outputs)


def flattened(model):
    """``model`` (a model or its :class:`~surgery.engine.graph.ModelGraph`) itself when
    nothing is nested in it, else :func:`flatten_model` of it; a model either way."""
    graph = resolve(model).require_functional()
    if any(graph.is_nested(layer) for layer in graph.model.layers):
        return flatten_model(graph)
    return graph.model
