"""Counting FLOPs: 2 × the multiply-accumulates of every call of every layer.

This module owns :func:`count_flops`. Each layer's rule counts one call from its config
and the call's real input and output shapes, so strides, padding, groups, depth
multipliers and time steps are all accounted for; element-wise layers (activations,
BatchNormalization, merges) count 0, as in most papers' tables. Nested models are
counted layer by layer. Batch size is 1.
"""
from __future__ import annotations

from typing import Union

from surgery.engine.rules import rule_for


def count_flops(model, per_layer: bool = False) -> Union[int, dict[str, int]]:
    """FLOPs of one forward pass (2 × multiply-accumulates, batch 1).

    Example::

        before, after = surgery.count_flops(model), surgery.count_flops(smaller)
        by_layer = surgery.count_flops(model, per_layer=True)
    """
    from surgery.pruning.arguments import check_model

    graph = check_model(model, "count_flops").require_functional()
    counts: dict[str, int] = {}
    for node in graph.calls():
        if graph.is_nested(node.layer):
            inner = count_flops(node.layer, per_layer=True)
        else:
            info = node.info
            rule = rule_for(info)
            inner = {node.layer.name: rule.flops(info)} if rule is not None else {}
        for name, flops in inner.items():
            if flops:
                counts[name] = counts.get(name, 0) + int(flops)
    return counts if per_layer else int(sum(counts.values()))
