"""``DepthwiseConv2D``: each input channel has its own ``depth_multiplier`` filters, so a
deleted input channel deletes those filters (kernel and bias) and the deletion passes on
to the output, ``depth_multiplier`` output channels per input channel."""
from __future__ import annotations

import numpy as np

from surgery.registry import channel_vector, mask_for_shape, output_shape, register_handler


@register_handler(("DepthwiseConv2D", "DepthwiseConv1D"))
def depthwise_conv(layer, mask):
    keep = channel_vector(mask)
    multiplier = layer.depth_multiplier
    out_keep = np.repeat(keep, multiplier)  # output channel c*m + j comes from input c
    out_mask = mask_for_shape(out_keep, output_shape(layer, mask))
    if keep.all():
        return layer, out_mask
    weights = layer.get_weights()
    kernel = weights[0][..., keep, :]  # (kh, kw, in, multiplier)
    new = [kernel] + [b[out_keep] for b in weights[1:]]  # bias: (in * multiplier,)
    config = layer.get_config()
    config["weights"] = new
    return type(layer).from_config(config), out_mask
