"""Layers that reshape: ``Flatten`` and ``Reshape`` move values to a new shape, so a mask
is reshaped like the data; ``Permute`` reorders axes and passes channels on while the
channel axis stays last. A reshape that splits channels apart blocks deletions."""
from __future__ import annotations

import numpy as np

from surgery.errors import UnsupportedLayerError
from surgery.engine.rules.base import (
    BLOCKING, CHANNELWISE, RESHAPE, LayerRule, reshaped_mask, rows_consistent,
)
from surgery.engine.rules.registry import register_rule


@register_rule("Flatten")
class FlattenRule(LayerRule):
    flow = RESHAPE


@register_rule("Reshape")
class ReshapeRule(LayerRule):
    flow = RESHAPE

    def cut_inputs(self, info, masks):
        if np.all(masks[0]):
            return None
        out = reshaped_mask(info, masks[0])
        if not rows_consistent(out):
            raise UnsupportedLayerError(info, "it splits channels across its new last axis")
        kept = int(out.reshape(-1, out.shape[-1])[0].sum())
        config = dict(info.config)
        config["target_shape"] = tuple(info.output_shape[:-1]) + (kept,)
        return config, info.weights


@register_rule("Permute")
class PermuteRule(LayerRule):
    def flow_of(self, info) -> str:
        dims = tuple(info.config["dims"])
        return CHANNELWISE if dims[-1] == len(dims) else BLOCKING

    def blocked(self, info) -> str:
        return f"channel axis moved by {info.describe()}"
