"""Transposed convolutions keep their kernel as ``(k..., filters, in)``: output channels on
axis -2, input channels on axis -1, the reverse of ``Conv2D``."""
from __future__ import annotations

import numpy as np

from surgery.registry import channel_vector, rebuilt, register_handler

_TRANSPOSED = ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")


@register_handler(_TRANSPOSED)
def transpose_inputs(layer, mask):
    keep = channel_vector(mask)
    if keep.all():
        return layer, None
    kernel, *bias = layer.get_weights()
    return rebuilt(layer, [kernel[..., keep], *bias]), None


@register_handler(_TRANSPOSED, outputs=True)
def transpose_outputs(layer, channels):
    kernel, *bias = layer.get_weights()
    new = [np.delete(kernel, channels, axis=-2)] + [np.delete(b, channels) for b in bias]
    return rebuilt(layer, new, filters=layer.filters - len(channels))
