"""Normalisation and per-channel scales. ``BatchNormalization`` keeps four vectors per
channel (a zeroed channel stays zero once ``beta`` and ``moving_mean`` are zero);
``LayerScale`` multiplies each channel by a learned factor; layer, group and unit
normalisation mix all channels, so deletions cannot cross them."""
from __future__ import annotations

import numpy as np

from surgery.engine.rules import BLOCKING, LayerRule, register_rule
from surgery.engine.rules.base import ChannelWeightsRule, with_config


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


@register_rule(("LayerNormalization", "GroupNormalization", "UnitNormalization"))
class CrossChannelNormRule(LayerRule):
    flow = BLOCKING
