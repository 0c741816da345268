"""Flattening models nested inside models.

The most common way to fine-tune is ``Sequential([MobileNetV2(...), GlobalAveragePooling2D(),
Dense(10)])``: the backbone is one *layer* of the outer model, so its channels cannot be
reached by surgery. This module owns :func:`flatten_model`, which replays every functional
sub-model's layers directly in the outer graph (fresh layer copies, weights copied, names
kept unique) so the result is one flat functional model computing the same function.
"""
from __future__ import annotations

from surgery.engine.adapters import adapter_for


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
    adapter = adapter_for(model)
    adapter.require_functional(model)
    used_names: set[str] = set(adapter.input_names(model))
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
        start = {adapter.key(t): new for t, new in zip(adapter.inputs(sub), inputs)}

        def visit(node, tensors):
            if adapter.is_nested(node.layer):
                return replay(node.layer, tensors)
            return node.call(copy_of(node.layer), tensors)

        values = adapter.walk(sub, visit, lambda t: start[adapter.key(t)])
        return [values[adapter.key(t)] for t in adapter.outputs(sub)]

    new_inputs = adapter.fresh_inputs(model)
    outputs = replay(model, new_inputs)
    adapter.set_weights(copies)
    return adapter.build_model(model, new_inputs, outputs)


def flattened(model):
    """``model`` itself when nothing is nested in it, else :func:`flatten_model` of it."""
    adapter = adapter_for(model)
    adapter.require_functional(model)
    if any(adapter.is_nested(layer) for layer in model.layers):
        return flatten_model(model)
    return model
