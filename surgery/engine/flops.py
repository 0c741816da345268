"""Counting FLOPs: 2 × the multiply-accumulates of every call of every layer.

This module owns :func:`count_flops`. Each layer's rule counts one call from its config
and the call's real input and output shapes, so strides, padding, groups, depth
multipliers and time steps are all accounted for; element-wise layers (activations,
BatchNormalization, merges) count 0, as in most papers' tables. Nested models are
counted layer by layer. Batch size is 1.
"""
from __future__ import annotations

from typing import Union

from surgery.engine.graph import ModelGraph, resolve
from surgery.engine.rules import rule_for


def count_flops(model, per_layer: bool = False) -> Union[int, dict[str, int]]:
    """FLOPs of one forward pass (2 × multiply-accumulates, batch 1).

    Example::

        before, after = surgery.count_flops(model), surgery.count_flops(smaller)
        by_layer = surgery.count_flops(model, per_layer=True)
    """
    counts = flops_by_layer(resolve(model, "count_flops"))
    return counts if per_layer else int(sum(counts.values()))


def flops_by_layer(graph: ModelGraph) -> dict[str, int]:
    """FLOPs of every layer (by name) of ``graph``'s model that has any; nested models
    counted layer by layer."""
    graph.require_functional()
    counts: dict[str, int] = {}
    for node in graph.calls():
        if graph.is_nested(node.layer):
            inner = flops_by_layer(graph.nested(node.layer))
        else:
            info = node.info
            rule = rule_for(info)
            inner = {node.layer.name: rule.flops(info)} if rule is not None else {}
        for name, flops in inner.items():
            if flops:
                counts[name] = counts.get(name, 0) + int(flops)
    return counts
