"""Cutting one call with its layer rule, and channel surgery by rebuilding a model.

This module owns :func:`cut` — what a call becomes when deleted channels reach its inputs
(its rule's ``cut_inputs`` / ``propagate``) and when its own output channels are deleted
(``cut_outputs``) — shared by both Keras generations, and :func:`delete_by_rebuild`, the
surgery pass for graph adapters that rebuild a whole model at once (Keras 3: masks walked
through the rules, then one ``clone_model`` with the new configs and sliced weights).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from surgery.errors import SurgeryError, UnsupportedLayerError
from surgery.engine.rules import PRODUCER, rule_for
from surgery.engine.rules.base import concrete
from surgery.engine.graph import ModelGraph


def cut(info, masks: list, channels: Optional[Sequence[int]], nested: bool = False,
        units: Optional[Mapping[str, Sequence[int]]] = None) -> tuple:
    """``(replacement, outbound mask)`` of one call: ``replacement`` is ``None`` (layer
    unchanged), ``(config, weights)``, or a layer object from an old-style handler.
    ``units`` (``{axis: indices}``) are the heads / head widths the layer loses."""
    rule = rule_for(info)
    live = any(m is not None for m in masks)
    if rule is None and (live or channels or units):
        detail = ("it is a model nested inside the model; flatten it first with "
                  "surgery.flatten_model(model)" if nested else "")
        raise UnsupportedLayerError(info, detail)
    replacement, mask = None, None
    if live:
        full = [np.ones(concrete(shape), bool) if m is None else m
                for m, shape in zip(masks, info.input_shapes)]
        replacement = rule.cut_inputs(info, full)
        mask = rule.propagate(info, full)
    if units and any(len(v) for v in units.values()):
        if replacement is not None and not isinstance(replacement, tuple):
            raise SurgeryError(f"layer {info.describe()}: a handler already rebuilt it")
        current = info if replacement is None else info.replaced(*replacement)
        replacement = rule.cut_units(current, {a: list(v) for a, v in units.items() if len(v)})
    if channels and rule.flow_of(info) == PRODUCER:  # not a shared layer's other calls
        if replacement is not None and not isinstance(replacement, tuple):
            raise SurgeryError(f"layer {info.describe()}: a handler already rebuilt it")
        current = info if replacement is None else info.replaced(*replacement)
        replacement = rule.cut_outputs(current, channels)
        axis = rule.channel_axis(info)
        mask = np.ones(concrete(info.output_shape), bool)
        np.moveaxis(mask, axis, -1)[..., channels] = False
    return replacement, mask


def checked_channels(info, channels) -> list[int]:
    """``channels`` as sorted unique indices, refused when out of range or all of them."""
    rule = rule_for(info)
    if rule is None or rule.flow_of(info) != PRODUCER:
        raise UnsupportedLayerError(
            info, "it has no output channels (filters or units) of its own to delete; "
                  "delete them at the layer that produces them")
    total = rule.channels(info)
    if channels is None:
        raise SurgeryError(f"delete_channels on layer '{info.name}' needs channels=[...]")
    chosen = sorted({int(c) for c in np.asarray(list(channels)).reshape(-1)})
    bad = [c for c in chosen if not 0 <= c < total]
    if bad:
        raise SurgeryError(
            f"channel indices {bad} are out of range for layer {info.describe()}, which "
            f"has {total} channels (0..{total - 1}).")
    if len(chosen) == total:
        raise SurgeryError(
            f"deleting all {total} channels of layer {info.describe()} would disconnect "
            "the model; keep at least one (surgery.plan's min_channels does this).")
    return chosen


def checked_units(info, units: Mapping[str, Sequence[int]]) -> dict:
    """``units`` (``{axis: indices}``) as sorted unique indices, refused when the layer
    has no such axis, an index is out of range, or every unit of an axis would go (but
    for a block that is a layer of its own: its one ``"blocks"`` unit, the whole layer,
    and for the rule's ``emptiable_axes``)."""
    rule = rule_for(info)
    axes = rule.unit_axes(info) if rule is not None else {}
    emptiable = set(rule.emptiable_axes(info)) if rule is not None else set()
    result = {}
    for axis, chosen in units.items():
        if axis not in axes:
            raise SurgeryError(
                f"layer {info.describe()} has no unit axis {axis!r} (it has "
                f"{sorted(axes) or 'none'}); plan.units names heads and head widths of "
                "attention layers")
        chosen = sorted({int(c) for c in chosen})
        size = int(axes[axis])
        whole = chosen and len(chosen) == size and not (axis == "blocks" and size == 1) \
            and axis not in emptiable
        if any(not 0 <= c < size for c in chosen) or whole:  # a block of its own may go
            raise SurgeryError(
                f"cannot delete {axis} {chosen} of layer {info.describe()}, which has "
                f"{size} (0..{size - 1}); keep at least one.")
        result[axis] = chosen
    return result


def delete_by_rebuild(graph: ModelGraph, deletions: Mapping[str, Sequence[int]],
                      units: Optional[Mapping[str, Mapping[str, Sequence[int]]]] = None):
    """A new model without the output channels in ``deletions`` (layer name -> indices)
    and the heads / head widths in ``units`` (layer name -> axis -> indices) of ``graph``
    (a :class:`~surgery.engine.graph.ModelGraph`), built by its adapter's
    ``rebuild``; the model is untouched."""
    graph.require_functional()
    model = graph.model
    units = dict(units or {})
    names = {n.layer.name for n in graph.calls()}
    unknown = sorted((set(deletions) | set(units)) - names)
    if unknown:
        raise SurgeryError(f"model '{model.name}' has no layers named {unknown}; "
                           "deletions must name layers of the model (see model.summary())")
    replaced: dict[int, tuple] = {}
    checked: dict[str, list[int]] = {}

    def visit(node, masks):
        info = node.info
        channels = deletions.get(info.name) or None
        if channels is not None and info.name not in checked:
            checked[info.name] = checked_channels(info, channels)
        if channels is not None:
            channels = checked[info.name]
        cuts = checked_units(info, units[info.name]) if info.name in units else None
        replacement, mask = cut(info, masks, channels, graph.is_nested(node.layer), cuts)
        if replacement is not None:
            if not isinstance(replacement, tuple):
                raise SurgeryError(
                    f"layer {info.describe()} is cut by an old-style handler that returns "
                    "a layer object, which works for tf-keras models only; register a "
                    "surgery.LayerRule for it instead")
            replaced.setdefault(id(node.layer), replacement)
        return mask

    graph.walk(visit, lambda t: None)
    return graph.adapter.rebuild(model, replaced)
