"""Flattening models nested inside models.

The most common way to fine-tune is ``Sequential([MobileNetV2(...), GlobalAveragePooling2D(),
Dense(10)])``: the backbone is one *layer* of the outer model, so its channels cannot be
reached by surgery. This module owns :func:`flatten_model`, which replays every functional
sub-model's layers directly in the outer graph (fresh layer copies, weights copied, names
kept unique) so the result is one flat functional model computing the same function.
"""
from __future__ import annotations

from surgery._backend import keras, tf
from surgery.surgeon import require_functional


def _topological_nodes(model):
    depth = {n: d for d, nodes in model._nodes_by_depth.items() for n in nodes}
    return [n for n in sorted(depth, key=depth.get, reverse=True) if not n.is_input]


def _is_nested(layer) -> bool:
    return isinstance(layer, keras.Model) and getattr(layer, "_is_graph_network", False)


def flatten_model(model: keras.Model) -> keras.Model:
    """A flat functional copy of ``model`` with every nested functional model inlined.

    Example::

        model = keras.Sequential([keras.Input((32, 32, 3)),
                                  keras.applications.MobileNetV2(include_top=False,
                                                                 weights=None),
                                  keras.layers.GlobalAveragePooling2D(),
                                  keras.layers.Dense(10)])
        flat = surgery.flatten_model(model)   # MobileNetV2's layers are now reachable
    """
    require_functional(model)
    used_names: set[str] = set()
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
            cache[layer] = type(layer).from_config(config)
            copies.append((cache[layer], layer))
        return cache[layer]

    def replay(sub, inputs):
        produced = {id(t): new for t, new in zip(sub.inputs, inputs)}
        for node in _topological_nodes(sub):
            args = [produced[id(t)] for t in node.keras_inputs]
            layer = node.outbound_layer
            if _is_nested(layer):
                outputs = replay(layer, args)
            else:
                table: dict[str, list] = {}
                for old, new in zip(node.keras_inputs, args):
                    table.setdefault(str(id(old)), []).append(new)
                call_args, call_kwargs = node.map_arguments(table)
                outputs = copy_of(layer)(*call_args, **call_kwargs)
            for old, new in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(outputs)):
                produced[id(old)] = new
        return [produced[id(t)] for t in sub.outputs]

    new_inputs = []
    for old in model.inputs:
        layer = old._keras_history.layer
        used_names.add(layer.name)
        new_inputs.append(keras.Input(batch_shape=old.shape, dtype=old.dtype, name=layer.name))
    outputs = replay(model, new_inputs)
    keras.backend.batch_set_value([pair for copy, original in copies
                                   for pair in zip(copy.weights, original.get_weights())])
    return keras.Model(tf.nest.pack_sequence_as(model._nested_inputs, new_inputs),
                       tf.nest.pack_sequence_as(model._nested_outputs, outputs),
                       name=model.name)


def flattened(model: keras.Model) -> keras.Model:
    """``model`` itself when nothing is nested in it, else :func:`flatten_model` of it."""
    if any(_is_nested(layer) for layer in model.layers):
        return flatten_model(model)
    return model
