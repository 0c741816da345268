"""``Dense``: kernel ``(in, units)``. It reads the last axis, so it consumes a flat mask
(after ``Flatten``) or the channel axis of a feature map (Dense per position, ConvNeXt)."""
from __future__ import annotations

import numpy as np

from surgery.engine.rules.base import PRODUCER, LayerRule, channel_vector, with_config, zeroed
from surgery.engine.rules.registry import register_rule
from surgery.engine.rules.convolutions import positions


@register_rule("Dense")
class DenseRule(LayerRule):
    flow = PRODUCER
    kernel_index = 0
    penalty = "kernel"

    def cut_outputs(self, info, channels):
        weights = [np.delete(w, channels, axis=-1) for w in info.weights]
        return with_config(info.config, units=int(info.config["units"]) - len(channels)), \
            weights

    def zero_outputs(self, info, channels):
        return zeroed(info.weights, channels)

    def cut_inputs(self, info, masks):
        keep = channel_vector(masks[0])
        if keep.all():
            return None
        kernel, *rest = info.weights
        return info.config, [kernel[keep, :], *rest]

    def fold_inputs(self, info, channels, means):
        if not info.config.get("use_bias", True) or len(info.weights) < 2:
            return None
        kernel, bias, *rest = info.weights
        shift = np.asarray(means, np.float64) @ np.asarray(kernel, np.float64)[list(channels)]
        return [kernel, (bias + shift).astype(bias.dtype), *rest]

    def filter_matrix(self, info):
        return info.weights[0].T

    def flops(self, info) -> int:
        return 2 * int(info.input_shape[-1]) * int(info.config["units"]) * \
            positions(info.output_shape)

    def linear_window(self, info):
        return dict(kernel=info.weights[0][None, None], strides=(1, 1), dilation=(1, 1),
                    padding="valid", dense=True)
