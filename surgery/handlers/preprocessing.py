"""Preprocessing layers found at a model's input. ``Rescaling`` is a scalar affine map and
passes deletions through; ``Normalization`` keeps a mean and variance per channel, which
lose the deleted channels' entries."""
from __future__ import annotations

import numpy as np

from surgery.errors import UnsupportedLayerError
from surgery.registry import channel_vector, register_handler


@register_handler("Rescaling")
def rescaling(layer, mask):
    if np.ndim(layer.scale) or np.ndim(layer.offset):
        if not np.all(mask):
            raise UnsupportedLayerError(layer, "per-channel scale or offset")
    return layer, mask


@register_handler("Normalization")
def normalization(layer, mask):
    keep = channel_vector(mask)
    if keep.all():
        return layer, mask
    axis = tuple(layer.axis) if layer.axis is not None else ()
    if axis not in ((-1,), (len(mask.shape),)):
        raise UnsupportedLayerError(layer, f"normalisation over axis {layer.axis}")
    config = layer.get_config()
    mean, variance = (np.asarray(layer.adapt_mean), np.asarray(layer.adapt_variance))
    config.update(mean=mean.reshape(-1)[keep].tolist(),
                  variance=variance.reshape(-1)[keep].tolist())
    config.pop("weights", None)
    return type(layer).from_config(config), mask
