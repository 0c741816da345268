"""Preprocessing layers found at a model's input. ``Rescaling`` is a scalar affine map and
passes deletions through; ``Normalization`` keeps a mean and variance per channel, which
lose the deleted channels' entries."""
from __future__ import annotations

import numpy as np

from surgery.errors import UnsupportedLayerError
from surgery.engine.rules.base import CHANNELWISE, LayerRule, channel_vector
from surgery.engine.rules.registry import register_rule


@register_rule("Rescaling")
class RescalingRule(LayerRule):
    flow = CHANNELWISE

    def input_blocked(self, info, index):
        scale, offset = info.config.get("scale", 1.0), info.config.get("offset", 0.0)
        if np.ndim(scale) or np.ndim(offset):
            return f"scaled per channel by {info.describe()}"
        return None

    def cut_inputs(self, info, masks):
        if self.input_blocked(info, 0) and not np.all(masks[0]):
            raise UnsupportedLayerError(info, "per-channel scale or offset")
        return None


@register_rule("Normalization")
class NormalizationRule(LayerRule):
    flow = CHANNELWISE

    def has_channel_weights(self, info) -> bool:
        return True

    def input_blocked(self, info, index):
        axis = info.config.get("axis")
        axis = tuple(axis) if isinstance(axis, (list, tuple)) else (axis,)
        if axis not in ((-1,), (len(info.input_shape),)):
            return f"normalised over axis {axis} by {info.describe()}"
        if info.layer is None or not hasattr(info.layer, "adapt_mean"):
            return f"{info.describe()} keeps its statistics outside its config"
        return None

    def cut_inputs(self, info, masks):
        keep = channel_vector(masks[0])
        if keep.all():
            return None
        axis = info.config.get("axis")
        axis = tuple(axis) if isinstance(axis, (list, tuple)) else (axis,)
        if axis not in ((-1,), (len(masks[0].shape),)):
            raise UnsupportedLayerError(info, f"normalisation over axis {axis}")
        if info.layer is None:
            raise UnsupportedLayerError(info, "its adapted statistics are not in its config")
        config = dict(info.config)
        mean = np.asarray(info.layer.adapt_mean).reshape(-1)[keep]
        variance = np.asarray(info.layer.adapt_variance).reshape(-1)[keep]
        config.update(mean=mean.tolist(), variance=variance.tolist())
        return config, None
