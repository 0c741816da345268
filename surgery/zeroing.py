"""Zeroing the channels a surgery will delete: the equivalence oracle.

This module owns :func:`zero_channels`, which returns a copy of a model in which the
channels listed for deletion produce exact zeros everywhere they flow (their kernel and
bias slices, and downstream BatchNormalization ``beta``/``moving_mean``, DepthwiseConv2D
bias and PReLU slopes along the way). Deleting those channels must then leave the model's
outputs unchanged, which is how :func:`surgery.verify` and the tests catch a wrong cut.
It follows channels through the graph with one keep-vector per tensor, the same way the
surgery's masks flow: through pass-through layers and merges, at offsets through
``Concatenate``, multiplied out by a depthwise ``depth_multiplier``, and it stops at the
first layer that mixes channels (a convolution or Dense).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from surgery._backend import keras, tf
from surgery.arguments import check_model

_MIXING = ("Conv1D", "Conv2D", "Conv3D", "Dense", "SeparableConv1D", "SeparableConv2D",
           "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose", "Flatten",
           "LayerNormalization")


def _clone(model: keras.Model) -> keras.Model:
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def _zero_outputs(layer, dead: np.ndarray) -> None:
    weights = layer.get_weights()
    name = type(layer).__name__
    if name.endswith("Transpose"):
        weights[0][..., dead, :] = 0
    elif name.startswith("SeparableConv"):
        weights[1][..., dead] = 0
    else:
        weights[0][..., dead] = 0
    if layer.use_bias:
        weights[-1][dead] = 0
    layer.set_weights(weights)


def _zero_along(layer, keep: np.ndarray) -> Optional[np.ndarray]:
    """Make ``layer`` map zero channels (``~keep``) to zero; return the outbound keep."""
    name = type(layer).__name__
    dead = ~keep
    if name == "BatchNormalization":
        weights = layer.get_weights()
        names = [w.name.split("/")[-1].split(":")[0] for w in layer.weights]
        for i, n in enumerate(names):
            if n in ("beta", "moving_mean"):
                weights[i][dead] = 0
        layer.set_weights(weights)
        return keep
    if name.startswith("DepthwiseConv"):
        out_keep = np.repeat(keep, layer.depth_multiplier)
        if layer.use_bias:
            weights = layer.get_weights()
            weights[-1][~out_keep] = 0
            layer.set_weights(weights)
        return out_keep
    if name == "PReLU":
        (alpha,) = layer.get_weights()
        alpha[..., dead] = 0
        layer.set_weights([alpha])
        return keep
    return keep


def zero_channels(model: keras.Model, deletions: Mapping[str, Sequence[int]]) -> keras.Model:
    """A copy of ``model`` whose channels in ``deletions`` produce exact zeros.

    Example::

        zeroed = surgery.zero_channels(model, {"block_1_expand": [0, 3]})
        pruned = surgery.delete_channels(model, "block_1_expand", [0, 3])
        np.testing.assert_allclose(zeroed.predict(x), pruned.predict(x), rtol=1e-5)
    """
    check_model(model, "zero_channels")
    clone = _clone(model)
    depth = {n: d for d, nodes in clone._nodes_by_depth.items() for n in nodes}
    keeps: dict[int, Optional[np.ndarray]] = {}
    for node in sorted(depth, key=depth.get, reverse=True):
        if node.is_input:
            continue
        layer = node.outbound_layer
        inbound = [keeps.get(id(t)) for t in node.keras_inputs]
        out = _outbound_keep(layer, node, inbound)
        if layer.name in deletions and len(deletions[layer.name]):
            channels = tf.nest.flatten(node.output_shapes)[-1]
            out = np.ones(channels, dtype=bool)
            out[list(deletions[layer.name])] = False
            _zero_outputs(layer, ~out)
        for t in tf.nest.flatten(node.outputs):
            keeps[id(t)] = out
    return clone


def _outbound_keep(layer, node, inbound):
    if all(k is None for k in inbound):
        return None
    name = type(layer).__name__
    if name in _MIXING:
        return None
    if name == "Concatenate":
        shapes = node.input_shapes
        return np.concatenate([np.ones(s[-1], bool) if k is None else k
                               for k, s in zip(inbound, shapes)])
    known = [k for k in inbound if k is not None and len(k) > 1]
    if not known:
        return None
    keep = np.logical_and.reduce(known) if len({len(k) for k in known}) == 1 else known[0]
    return _zero_along(layer, keep)


def max_relative_difference(a, b) -> float:
    """max |a - b| / max |a| over all outputs (0 when both are all zero)."""
    a, b = tf.nest.flatten(a), tf.nest.flatten(b)
    num = max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
              for x, y in zip(a, b))
    den = max(float(np.max(np.abs(np.asarray(x, np.float64)))) for x in a)
    return num / den if den > 0 else num
