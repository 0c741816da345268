"""Layers that move values in space without mixing channels: pooling and global pooling,
padding, cropping and up-sampling in 1-D, 2-D and 3-D, and the layers that are the
identity at inference (dropout, noise). Channel ``c`` stays channel ``c``; only the
spatial axes of a mask change, which the output shape gives."""
from __future__ import annotations

from surgery.engine.rules.base import CHANNELWISE, LayerRule
from surgery.engine.rules.registry import register_rule

_DIMS = ("1D", "2D", "3D")
SPATIAL = tuple(f"{kind}{d}" for d in _DIMS for kind in (
    "MaxPooling", "AveragePooling", "GlobalMaxPooling", "GlobalAveragePooling",
    "ZeroPadding", "Cropping", "UpSampling")) + ("MaxPool2D", "AvgPool2D")
IDENTITY_AT_INFERENCE = ("Dropout", "SpatialDropout1D", "SpatialDropout2D",
                         "SpatialDropout3D", "GaussianNoise", "GaussianDropout",
                         "AlphaDropout", "ActivityRegularization", "Masking", "Identity")


@register_rule(SPATIAL)
class SpatialRule(LayerRule):
    flow = CHANNELWISE


@register_rule(IDENTITY_AT_INFERENCE)
class IdentityAtInferenceRule(LayerRule):
    flow = CHANNELWISE
    identity_at_inference = True

    def identity(self, info) -> bool:
        return True
