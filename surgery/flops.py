"""Counting FLOPs: 2 × the multiply-accumulates of the layers that hold kernels.

This module owns :func:`count_flops`. It reads each node's real input and output shapes,
so strides, padding, groups and depth multipliers are all accounted for; element-wise
layers (activations, BatchNormalization, merges) are not counted, as in most papers'
tables. Batch size is 1.
"""
from __future__ import annotations

from typing import Union

import numpy as np

from surgery._backend import keras, tf
from surgery.arguments import check_model


def _macs(layer, in_shape, out_shape) -> int:
    name = type(layer).__name__
    out_positions = int(np.prod(out_shape[1:-1])) if len(out_shape) > 2 else 1
    if name.startswith("DepthwiseConv"):
        return int(np.prod(layer.kernel_size)) * in_shape[-1] * layer.depth_multiplier * \
            out_positions
    if name.startswith("SeparableConv"):
        depthwise = int(np.prod(layer.kernel_size)) * in_shape[-1] * layer.depth_multiplier
        pointwise = in_shape[-1] * layer.depth_multiplier * out_shape[-1]
        return (depthwise + pointwise) * out_positions
    if name.endswith("Transpose"):
        in_positions = int(np.prod(in_shape[1:-1]))
        return int(np.prod(layer.kernel_size)) * in_shape[-1] * out_shape[-1] * in_positions
    if name in ("Conv1D", "Conv2D", "Conv3D"):
        groups = getattr(layer, "groups", 1) or 1
        return int(np.prod(layer.kernel_size)) * (in_shape[-1] // groups) * out_shape[-1] * \
            out_positions
    if name == "Dense":
        return in_shape[-1] * out_shape[-1] * out_positions
    return 0


def count_flops(model: keras.Model, per_layer: bool = False) -> Union[int, dict[str, int]]:
    """FLOPs of one forward pass (2 × multiply-accumulates, batch 1).

    Example::

        before, after = surgery.count_flops(model), surgery.count_flops(smaller)
        by_layer = surgery.count_flops(model, per_layer=True)
    """
    check_model(model, "count_flops")
    counts: dict[str, int] = {}
    nodes = {n for depth_nodes in model._nodes_by_depth.values() for n in depth_nodes}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            for name, flops in count_flops(layer, per_layer=True).items():
                counts[name] = counts.get(name, 0) + flops
            continue
        for node in layer.inbound_nodes:
            if node not in nodes or node.is_input:
                continue
            ins, outs = node.input_shapes, node.output_shapes
            ins = tuple(ins[0] if isinstance(ins, list) else ins)
            outs = tuple(outs[0] if isinstance(outs, list) else outs)
            flops = 2 * _macs(layer, ins, outs)
            if flops:
                counts[layer.name] = counts.get(layer.name, 0) + flops
    return counts if per_layer else int(sum(counts.values()))
