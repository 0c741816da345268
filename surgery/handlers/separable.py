"""``SeparableConv2D`` / ``SeparableConv1D``: a depthwise kernel ``(k, in, m)`` followed by a
pointwise kernel ``(1, in*m, filters)``. Deleted inputs remove depthwise slices and the
matching pointwise rows; deleted outputs remove pointwise columns and bias entries."""
from __future__ import annotations

import numpy as np

from surgery.registry import channel_vector, rebuilt, register_handler


@register_handler(("SeparableConv1D", "SeparableConv2D"))
def separable_inputs(layer, mask):
    keep = channel_vector(mask)
    if keep.all():
        return layer, None
    depthwise, pointwise, *bias = layer.get_weights()
    rows = np.repeat(keep, layer.depth_multiplier)
    return rebuilt(layer, [depthwise[..., keep, :], pointwise[..., rows, :], *bias]), None


@register_handler(("SeparableConv1D", "SeparableConv2D"), outputs=True)
def separable_outputs(layer, channels):
    depthwise, pointwise, *bias = layer.get_weights()
    new = [depthwise, np.delete(pointwise, channels, axis=-1)]
    new += [np.delete(b, channels, axis=-1) for b in bias]
    return rebuilt(layer, new, filters=layer.filters - len(channels))
