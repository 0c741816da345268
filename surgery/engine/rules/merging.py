"""Merge layers. Element-wise merges (``Add``, ``Subtract``, ``Multiply``, ``Average``,
``Maximum``, ``Minimum``, InceptionResNetV2's ``CustomScaleLayer``) couple their inputs'
channels; inputs may broadcast (a ``(1, 1, C)`` squeeze-excite gate times an ``(H, W, C)``
map). ``Concatenate`` stacks its inputs' channels at their offsets."""
from __future__ import annotations

from surgery.engine.rules.base import CONCAT, MERGE, LayerRule
from surgery.engine.rules.registry import register_rule

ELEMENTWISE_MERGES = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum",
                      "CustomScaleLayer")


@register_rule(ELEMENTWISE_MERGES)
class ElementwiseMergeRule(LayerRule):
    flow = MERGE


@register_rule("Concatenate")
class ConcatenateRule(LayerRule):
    flow = CONCAT

    def concat_axis(self, info) -> int:
        rank = len(info.output_shape) + 1
        return int(info.config.get("axis", -1)) % rank - 1

    def flow_of(self, info) -> str:
        if self.concat_axis(info) == len(info.output_shape) - 1:
            return CONCAT
        return MERGE  # joined along a spatial axis: channel c of every input is one channel
