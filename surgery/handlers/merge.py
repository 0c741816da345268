"""Merge layers. Element-wise merges (``Add``, ``Subtract``, ``Multiply``, ``Average``,
``Maximum``, ``Minimum``) need every input to lose the same channels; inputs may broadcast
(a ``(1, 1, C)`` squeeze-excite gate times an ``(H, W, C)`` map). ``Concatenate`` stacks
its inputs' masks at their offsets."""
from __future__ import annotations

import numpy as np

from surgery.errors import SurgeryError
from surgery.registry import channel_vector, register_handler

# CustomScaleLayer: InceptionResNetV2's ``x + scale * branch``.
ELEMENTWISE = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum",
               "CustomScaleLayer")


def merged_mask(layer, masks):
    """The outbound mask of an element-wise merge of ``masks`` (broadcast together)."""
    masks = [np.asarray(m, dtype=bool) for m in masks]
    keeps = [channel_vector(m) for m in masks if m.shape[-1] != 1]
    if any(not np.array_equal(keeps[0], k) for k in keeps[1:]):
        lost = [np.flatnonzero(~k).tolist() for k in keeps]
        raise SurgeryError(
            f"layer '{layer.name}' ({type(layer).__name__}) merges inputs that lose different "
            f"channels ({lost}); coupled layers must lose the same channels — use "
            "surgery.plan, which groups them, or delete the same channels from each input.")
    shape = np.broadcast_shapes(*[m.shape for m in masks])
    return np.logical_and.reduce([np.broadcast_to(m, shape) for m in masks])


@register_handler(ELEMENTWISE)
def elementwise_merge(layer, masks):
    return layer, merged_mask(layer, masks)


@register_handler("Concatenate")
def concatenate(layer, masks):
    axis = layer.axis % (masks[0].ndim + 1)
    return layer, np.concatenate(masks, axis=axis - 1)  # masks have no batch axis
