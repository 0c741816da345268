"""Convolutions: plain and grouped ``Conv1D/2D/3D``, transposed, separable and depthwise.

Plain kernels are ``(k..., in / groups, filters)``; transposed ones ``(k..., filters, in)``;
separable layers hold a depthwise kernel ``(k..., in, m)`` and a pointwise kernel
``(1..., in·m, filters)``; a depthwise kernel ``(k..., in, m)`` gives output channel
``c·m + j`` from input channel ``c``, so it passes deletions on, ``m`` outputs each.
"""
from __future__ import annotations

import numpy as np

from surgery.errors import SurgeryError
from surgery.engine.rules.base import (
    CHANNELWISE, PRODUCER, LayerRule, channel_vector, concrete, with_config, zeroed,
)
from surgery.engine.rules.registry import register_rule


def positions(shape) -> int:
    """Spatial positions of a channels-last shape without batch (1 for a vector); an
    unknown size (a variable sequence length) counts as 1, so FLOPs are per position."""
    return int(np.prod(concrete(shape[:-1]))) if len(shape) > 1 else 1


def _in_channels(info) -> int:
    axis = 0 if info.config.get("data_format") == "channels_first" else -1
    return int(info.input_shape[axis])


def _spatial(info, shape) -> int:
    if info.config.get("data_format") == "channels_first":
        return int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return positions(shape)


def _without(weights, channels, axis) -> list:
    return [np.delete(w, channels, axis=axis if w.ndim > 1 else -1) for w in weights]


@register_rule(("Conv1D", "Conv2D", "Conv3D"))
class ConvRule(LayerRule):
    """Plain and grouped convolutions: producers that read their input through a kernel."""

    flow = PRODUCER
    kernel_index = 0
    penalty = "kernel"

    def blocks(self, info) -> int:
        return int(info.config.get("groups", 1) or 1)

    def cut_outputs(self, info, channels):
        groups = self.blocks(info)
        total = int(info.config["filters"])
        if groups > 1:
            counts = np.bincount(np.asarray(channels) // (total // groups), minlength=groups)
            if len(set(counts.tolist())) != 1:
                raise SurgeryError(
                    f"layer {info.describe()} has groups={groups}: every group must lose "
                    f"the same number of filters, got {counts.tolist()} (use surgery.plan, "
                    "which deletes group-wise).")
        return (with_config(info.config, filters=total - len(channels)),
                _without(info.weights, channels, -1))

    def zero_outputs(self, info, channels):
        return zeroed(info.weights, channels)

    def cut_inputs(self, info, masks):
        axis = 0 if info.config.get("data_format") == "channels_first" else -1
        keep = channel_vector(masks[0], axis)
        if keep.all():
            return None
        kernel, *rest = info.weights
        groups = self.blocks(info)
        if groups == 1:
            return info.config, [kernel[..., keep, :], *rest]
        kept = keep.reshape(groups, kernel.shape[-2])
        if len(set(kept.sum(axis=1).tolist())) != 1:
            raise SurgeryError(
                f"layer {info.describe()} has groups={groups}: its input channels must leave "
                "every group equally (use surgery.plan, which deletes group-wise).")
        width = kernel.shape[-1] // groups
        slices = [kernel[..., kept[g], g * width:(g + 1) * width] for g in range(groups)]
        return info.config, [np.concatenate(slices, axis=-1), *rest]

    def filter_matrix(self, info):
        kernel = np.moveaxis(info.weights[0], -1, 0)
        return kernel.reshape(kernel.shape[0], -1)

    def flops(self, info) -> int:
        kernel = int(np.prod(info.config["kernel_size"]))
        fan_in = _in_channels(info) // self.blocks(info)
        out = int(info.config["filters"])
        return 2 * kernel * fan_in * out * _spatial(info, info.output_shape)

    def linear_window(self, info):
        if info.class_name != "Conv2D" or self.blocks(info) != 1 or \
                info.config.get("data_format") == "channels_first":
            return None
        return dict(kernel=info.weights[0], strides=tuple(info.config["strides"]),
                    dilation=tuple(info.config["dilation_rate"]),
                    padding=info.config["padding"])

    def relu_like(self, info) -> bool:
        return False


@register_rule(("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"))
class ConvTransposeRule(LayerRule):
    """Transposed convolutions: kernel ``(k..., filters, in)``, the reverse of Conv2D."""

    flow = PRODUCER
    kernel_index = 0

    def cut_outputs(self, info, channels):
        kernel, *bias = info.weights
        weights = [np.delete(kernel, channels, axis=-2)] + [np.delete(b, channels) for b in bias]
        return with_config(info.config, filters=int(info.config["filters"]) - len(channels)), \
            weights

    def zero_outputs(self, info, channels):
        return zeroed(info.weights, channels, axis=-2)

    def cut_inputs(self, info, masks):
        keep = channel_vector(masks[0])
        if keep.all():
            return None
        kernel, *bias = info.weights
        return info.config, [kernel[..., keep], *bias]

    def filter_matrix(self, info):
        kernel = np.moveaxis(info.weights[0], -2, 0)
        return kernel.reshape(kernel.shape[0], -1)

    def flops(self, info) -> int:
        kernel = int(np.prod(info.config["kernel_size"]))
        return 2 * kernel * _in_channels(info) * int(info.config["filters"]) * \
            positions(info.input_shape)


@register_rule(("SeparableConv1D", "SeparableConv2D"))
class SeparableConvRule(LayerRule):
    """Depthwise then pointwise: inputs cut both kernels, outputs the pointwise one."""

    flow = PRODUCER
    kernel_index = 1

    def cut_outputs(self, info, channels):
        depthwise, pointwise, *bias = info.weights
        weights = [depthwise, np.delete(pointwise, channels, axis=-1)]
        weights += [np.delete(b, channels, axis=-1) for b in bias]
        return with_config(info.config, filters=int(info.config["filters"]) - len(channels)), \
            weights

    def zero_outputs(self, info, channels):
        return zeroed(info.weights, channels, kernel=1)

    def cut_inputs(self, info, masks):
        keep = channel_vector(masks[0])
        if keep.all():
            return None
        depthwise, pointwise, *bias = info.weights
        rows = np.repeat(keep, int(info.config["depth_multiplier"]))
        return info.config, [depthwise[..., keep, :], pointwise[..., rows, :], *bias]

    def filter_matrix(self, info):
        kernel = np.moveaxis(info.weights[1], -1, 0)
        return kernel.reshape(kernel.shape[0], -1)

    def flops(self, info) -> int:
        inner = _in_channels(info) * int(info.config["depth_multiplier"])
        per_position = int(np.prod(info.config["kernel_size"])) * inner + \
            inner * int(info.config["filters"])
        return 2 * per_position * positions(info.output_shape)


@register_rule(("DepthwiseConv1D", "DepthwiseConv2D"))
class DepthwiseConvRule(LayerRule):
    """Each input channel has its own ``depth_multiplier`` filters (kernel and bias)."""

    flow = CHANNELWISE
    kernel_index = 0
    penalty = "depthwise"

    def multiplier(self, info) -> int:
        return int(info.config.get("depth_multiplier", 1))

    def has_channel_weights(self, info) -> bool:
        return True

    def cut_inputs(self, info, masks):
        keep = channel_vector(masks[0])
        if keep.all():
            return None
        out_keep = np.repeat(keep, self.multiplier(info))
        kernel, *bias = info.weights
        return info.config, [kernel[..., keep, :]] + [b[out_keep] for b in bias]

    def zero_inputs(self, info, keep):
        if not info.config.get("use_bias", True) or len(info.weights) < 2:
            return None
        out_keep = np.repeat(keep, self.multiplier(info))
        kernel, bias = info.weights
        bias = bias.copy()
        bias[~out_keep] = 0
        return [kernel, bias]

    def filter_matrix(self, info):
        kernel = info.weights[0]  # (k..., in, multiplier): output c·m + j
        return kernel.reshape(-1, kernel.shape[-2] * kernel.shape[-1]).T

    def flops(self, info) -> int:
        return 2 * int(np.prod(info.config["kernel_size"])) * _in_channels(info) * \
            self.multiplier(info) * positions(info.output_shape)
