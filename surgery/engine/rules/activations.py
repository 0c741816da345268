"""Activations. Element-wise ones pass deletions through; ``PReLU`` also keeps a slope per
channel; softmax normalises across channels, so deletions cannot cross it."""
from __future__ import annotations

import numpy as np

from surgery.engine.rules.base import BLOCKING, CHANNELWISE, LayerRule, ChannelWeightsRule
from surgery.engine.rules.registry import register_rule

_RELU = ("relu", "relu6")
_CHANNEL_MIXING = ("softmax", "log_softmax")


@register_rule(("LeakyReLU", "ELU", "ThresholdedReLU"))
class ElementwiseActivationRule(LayerRule):
    flow = CHANNELWISE


@register_rule("ReLU")
class ReLURule(LayerRule):
    flow = CHANNELWISE

    def relu_like(self, info) -> bool:
        slope = info.config.get("negative_slope", 0.0)
        threshold = info.config.get("threshold", 0.0)
        return float(np.asarray(slope)) == 0.0 and float(np.asarray(threshold)) >= 0.0

    def activation(self, info) -> str:
        return "relu"


@register_rule("Activation")
class ActivationRule(LayerRule):
    def flow_of(self, info) -> str:
        return BLOCKING if self.activation(info) in _CHANNEL_MIXING else CHANNELWISE

    def relu_like(self, info) -> bool:
        return self.activation(info) in _RELU

    def identity(self, info) -> bool:
        return self.activation(info) == "linear"


@register_rule("Softmax")
class SoftmaxRule(LayerRule):
    flow = BLOCKING

    def activation(self, info) -> str:
        return "softmax"


@register_rule("PReLU")
class PReLURule(ChannelWeightsRule):
    """One slope per channel; PReLU(0) = 0 whatever the slope."""
