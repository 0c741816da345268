"""Flattening models nested inside models.

The most common way to fine-tune is ``Sequential([MobileNetV2(...), GlobalAveragePooling2D(),
Dense(10)])``: the backbone is one *layer* of the outer model, so its channels cannot be
reached by surgery. This module owns :func:`flatten_model`, which replays every functional
sub-model's layers directly in the outer graph (fresh layer copies, weights copied, names
kept unique) so the result is one flat functional model computing the same function.
"""
from __future__ import annotations

from surgery.engine import keras2


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
    keras2.require_functional(model)
    used_names: set[str] = set(keras2.input_names(model))
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
            cache[layer] = keras2.new_layer(layer, config)
            copies.append((cache[layer], layer.get_weights()))
        return cache[layer]

    def replay(sub, inputs):
        start = {keras2.key(t): new for t, new in zip(sub.inputs, inputs)}

        def visit(node, tensors):
            if keras2.is_nested(node.layer):
                return replay(node.layer, tensors)
            return node.call(copy_of(node.layer), tensors)

        values = keras2.walk(sub, visit, lambda t: start[keras2.key(t)])
        return [values[keras2.key(t)] for t in sub.outputs]

    new_inputs = keras2.fresh_inputs(model)
    outputs = replay(model, new_inputs)
    keras2.set_weights(copies)
    return keras2.build_model(model, new_inputs, outputs)


def flattened(model):
    """``model`` itself when nothing is nested in it, else :func:`flatten_model` of it."""
    keras2.require_functional(model)
    if any(keras2.is_nested(layer) for layer in model.layers):
        return flatten_model(model)
    return model
