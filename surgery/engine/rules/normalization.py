"""Normalisation and per-channel scales. ``BatchNormalization`` keeps four vectors per
channel (a zeroed channel stays zero once ``beta`` and ``moving_mean`` are zero);
``LayerScale`` multiplies each channel by a learned factor.

RMS normalisation over the last axis, ``x * rsqrt(mean(x**2) + eps) * g`` (Keras 3's
``RMSNormalization``; keras-hub's ``LlamaLayerNorm``, ``MistralLayerNormalization``,
``QwenLayerNorm``, ``Phi3LayerNorm``…, and Gemma's ``RMSNormalization``, which multiplies
by ``1 + g``), stays exact when zero channels are deleted: with ``d`` channels of which
``d'`` are kept, ``mean`` over ``d`` is ``d'/d`` times the mean over ``d'``, so
``rsqrt(S/d + eps) = sqrt(d/d') * rsqrt(S/d' + eps*d/d')``: the kept gain is multiplied by
``sqrt(d/d')`` and ``eps`` by ``d/d'``. Mean-centred ``LayerNormalization`` is not exact
(the deleted channels moved the mean and variance), nor Keras 3.15's
``LayerNormalization(rms_scaling=True)``, which divides by the centred variance
(``ops.var``), not the mean square; deletions cross them only in approximate plans
(:func:`~surgery.engine.rules.base.approximate`). Group and unit normalisation mix all
channels, so deletions never cross them."""
from __future__ import annotations

import numpy as np

from surgery.engine.rules.base import BLOCKING, CHANNELWISE, LayerRule
from surgery.engine.rules.registry import register_rule
from surgery.engine.rules.base import (
    ChannelWeightsRule, approximating, channel_vector, with_config,
)


def _bn_slots(config) -> list[str]:
    names = []
    if config.get("scale", True):
        names.append("gamma")
    if config.get("center", True):
        names.append("beta")
    return names + ["moving_mean", "moving_variance"]


@register_rule(("BatchNormalization", "SyncBatchNormalization"))
class BatchNormalizationRule(ChannelWeightsRule):
    penalty = "gamma"

    def zero_inputs(self, info, keep):
        weights = [w.copy() for w in info.weights]
        for slot, w in zip(_bn_slots(info.config), weights):
            if slot in ("beta", "moving_mean"):
                w[~keep] = 0
        return weights

    def channel_scale(self, info):
        if not info.config.get("scale", True):
            return None
        return np.asarray(info.weights[0]).reshape(-1)

    def identity(self, info) -> bool:
        return True  # an affine map per channel: the chain walks of criteria cross it


@register_rule("LayerScale")
class LayerScaleRule(ChannelWeightsRule):
    """ConvNeXt's ``x * gamma`` per channel."""

    def cut_inputs(self, info, masks):
        cut = super().cut_inputs(info, masks)
        if cut is None or "projection_dim" not in info.config:
            return cut
        return with_config(info.config, projection_dim=len(cut[1][0])), cut[1]


def _last_axis_only(info) -> bool:
    """True when the layer normalises over the last axis alone."""
    axis = info.config.get("axis", -1)
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    rank = len(info.input_shape) + 1  # with the batch axis
    return len(axes) == 1 and axes[0] is not None and int(axes[0]) % rank == rank - 1


@register_rule(("GroupNormalization", "UnitNormalization"))
class CrossChannelNormRule(LayerRule):
    flow = BLOCKING


@register_rule("LayerNormalization")
class LayerNormalizationRule(ChannelWeightsRule):
    """Blocking, except in approximate plans: then gamma and beta lose the deleted
    channels' entries, and zeroing sets them to zero so the deleted channels leave it as
    zeros (the kept channels still see the old mean and variance: that is the
    approximation a plan reports)."""

    def flow_of(self, info) -> str:
        return CHANNELWISE if approximating() and _last_axis_only(info) else BLOCKING

    def blocked(self, info) -> str:
        return (f"normalised across channels by {info.describe()} (mean-centred: deleting "
                "channels across it is not exact; plan(..., exact=False) allows it "
                "approximately)")

    def inexact(self, info) -> bool:
        return True

    def zero_inputs(self, info, keep):
        if keep.all():
            return None
        return [np.where(keep, w, 0).astype(w.dtype) for w in info.weights]


class RMSNormRule(ChannelWeightsRule):
    """RMS normalisation over the last axis with a gain vector ``scale`` (its only
    weight), ``epsilon`` in the config (``None``: Keras's default, 1e-7); ``offset`` is
    1 when the gain is applied as ``1 + scale`` (Gemma)."""

    offset = 0.0

    def _offset(self, info) -> float:
        return self.offset

    def _exact(self, info) -> bool:
        return "epsilon" in info.config and _last_axis_only(info)

    def flow_of(self, info) -> str:
        return CHANNELWISE if self._exact(info) else BLOCKING

    def blocked(self, info) -> str:
        why = ("its epsilon is fixed in code, so it cannot be rescaled"
               if "epsilon" not in info.config else "it normalises over several axes")
        return f"normalised across channels by {info.describe()}: {why}"

    def cut_inputs(self, info, masks):
        keep = channel_vector(masks[0])
        if keep.all():
            return None
        ratio = len(keep) / int(keep.sum())  # d / d'
        epsilon = info.config.get("epsilon")
        if epsilon is None:
            from keras import config as keras_config  # lazy: Keras 3 only (its default)
            epsilon = keras_config.epsilon()
        offset = self._offset(info)
        weights = []
        for w in info.weights:
            kept = w[..., keep].astype(np.float64)
            weights.append(((kept + offset) * np.sqrt(ratio) - offset).astype(w.dtype))
        return with_config(info.config, epsilon=float(epsilon) * ratio), weights


@register_rule("RMSNormalization")
class RMSNormalizationRule(RMSNormRule):
    """Keras 3's ``RMSNormalization`` (config ``axis``, ``epsilon``); Gemma's layer of the
    same class name (``epsilon`` only) applies ``1 + scale``; keras-hub's
    ``keras_hub.layers.RMSNormalization`` (neither) fixes epsilon in code and blocks."""

    def _offset(self, info) -> float:
        return 0.0 if "axis" in info.config else 1.0


register_rule(("LlamaLayerNorm", "MistralLayerNormalization", "MixtralLayerNormalization",
               "QwenLayerNorm", "QwenMoeLayerNorm", "Qwen3LayerNorm", "Qwen3MoeLayerNorm",
               "Phi3LayerNorm"))(RMSNormRule)
