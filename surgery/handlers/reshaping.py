"""Layers that move values without mixing channels: cropping keeps the channel axis and
crops the mask like the data; ``Reshape`` (e.g. to ``(1, 1, C)`` in squeeze-excite) reshapes
the mask like the data and its target shape loses the deleted channels."""
from __future__ import annotations

import numpy as np

from surgery.errors import SurgeryError
from surgery.registry import channel_vector, output_shape, register_handler


@register_handler("Cropping2D")
def cropping2d(layer, mask):
    (top, bottom), (left, right) = layer.cropping
    if layer.data_format == "channels_first":
        h, w = mask.shape[1:]
        return layer, mask[:, top:h - bottom, left:w - right]
    h, w = mask.shape[:2]
    return layer, mask[top:h - bottom, left:w - right, :]


@register_handler("Reshape")
def reshape(layer, mask):
    target = output_shape(layer, mask)
    if target[-1] != mask.shape[-1] and not np.all(mask):
        raise SurgeryError(
            f"layer '{layer.name}' (Reshape) changes the channel axis from {mask.shape[-1]} "
            f"to {target[-1]}, so deleted channels would not stay whole; leave the channels "
            "that reach it alone with ignore=[...].")
    out_mask = np.reshape(mask, target)
    if np.all(mask):
        return layer, out_mask
    kept = int(channel_vector(out_mask).sum())
    config = layer.get_config()
    config["target_shape"] = tuple(target[:-1]) + (kept,)
    return type(layer).from_config(config), out_mask
