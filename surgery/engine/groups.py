"""Channel groups: which output channels of a model must be deleted together.

This module owns the graph analysis. Every output channel of every producer (a layer
with ``filters``/``units``; a shared layer's channels once, whatever it is called on) gets
an id, and each tensor's channel axis is described as an array of ids, walked in
topological order with the layer rules: channel-wise layers carry ids (a depthwise
``depth_multiplier`` repeats them), ``Concatenate`` joins them, reshapes move them like
the data, and element-wise merges (``Add``, ``x + y``, squeeze-excite gates) unite the ids
they join (union-find), which is how identity shortcuts chain whole stages together.

A *group* is the set of united channels that touch the same producers: channel ``i`` of
a group is one decision for every member. Because the unit is a channel, a
``Concatenate`` added to a single conv splits that conv into one sub-group per
concatenated input (InceptionResNetV2, NASNet). Channels that cannot be cut exactly
(normalised across channels, reaching a model output or a layer no rule knows, a model
input) mark their whole group skipped, with the reason.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from surgery.engine.flatten import flattened
from surgery.engine.graph import ModelGraph, resolve
from surgery.errors import SurgeryError
from surgery.engine.rules.base import concrete
from surgery.engine.rules import (
    BLOCKING, CHANNELWISE, CONCAT, MERGE, MIXING, PRODUCER, RESHAPE, rule_for,
)


@dataclasses.dataclass
class ChannelGroup:
    """Output channels of ``producers`` that must be deleted together.

    ``producers`` are the layers with ``filters``/``units`` whose channels are in this
    group, in topological order; ``channels`` maps each to its channel index for each of
    the group's ``size`` channels (a list of indices per group channel; usually
    ``range(size)``, a slice when the producer is split between groups); ``followers``
    the layers the channels pass through that keep weights per channel
    (BatchNormalization, DepthwiseConv2D, …) and read this group alone; ``blocks`` > 1
    when a grouped convolution reads or makes them, so channels must leave each of
    ``blocks`` equal slices equally; ``skipped`` why it cannot be cut, if so;
    ``approximate`` the layers the channels cross that a deletion changes only
    approximately (LayerNormalization, in ``exact=False`` plans). A group
    with an ``axis`` holds units that no tensor carries, inside its one producer (the
    ``"heads"`` of a MultiHeadAttention; see ``LayerRule.unit_axes``), or one unit in each
    of its producers: the ``"blocks"`` of a model whose blocks are layers of their own
    (:func:`stacked_blocks`).
    """

    producers: list[str]
    size: int
    followers: list[str] = dataclasses.field(default_factory=list)
    blocks: int = 1
    skipped: Optional[str] = None
    approximate: list[str] = dataclasses.field(default_factory=list)
    channels: dict[str, list[list[int]]] = dataclasses.field(default_factory=dict, repr=False)
    axis: Optional[str] = None
    emptiable: bool = False  # a unit axis whose units may all go (LayerRule.emptiable_axes)

    @property
    def name(self) -> str:
        name = self.producers[0] if self.producers else "<input>"
        if self.axis and len(self.producers) > 1:
            name = f"{name}..{self.producers[-1]}"
        return f"{name}:{self.axis}" if self.axis else name

    def member_channels(self, producer: str, positions) -> list[int]:
        """The producer's channel indices for the group channels at ``positions``."""
        rows = self.channels[producer]
        return sorted({c for i in positions for c in rows[int(i)]})


def _width(shape) -> int:
    """The size of a tensor's channel (last) axis; an unknown size (``None``, as in a
    variable-length sequence of token ids) or a scalar counts as 1."""
    return concrete(shape)[-1] if shape is not None and len(shape) else 1


class _UnionFind:
    def __init__(self):
        self.parent: list[int] = []

    def new(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n)

    def find(self, a: int) -> int:
        parent = self.parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:
            parent[a], a = root, parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


class _Analysis:
    """One walk over a model: channel ids per tensor and the facts about them."""

    def __init__(self):
        self.uf = _UnionFind()
        self.owner: dict[str, tuple[np.ndarray, str]] = {}  # producer -> (ids, name)
        self.order: list[str] = []
        self.skips: list[tuple[np.ndarray, str]] = []
        self.followers: list[tuple[np.ndarray, str]] = []
        self.approximate: list[tuple[np.ndarray, str]] = []
        self.blocks: list[tuple[np.ndarray, int]] = []
        self.skipped_layers: dict[str, str] = {}
        self.calls: dict[str, list] = {}  # shared layer -> its first call's inbound ids
        self.units: dict[str, ChannelGroup] = {}  # "layer:axis" -> its unit group

    def new(self, n: int, reason: Optional[str] = None) -> np.ndarray:
        ids = self.uf.new(n)
        if reason:
            self.skips.append((ids, reason))
        return ids

    def unite(self, arrays: list[np.ndarray]) -> None:
        first = arrays[0]
        for other in arrays[1:]:
            for a, b in zip(first.tolist(), other.tolist()):
                self.uf.union(a, b)

    def visit(self, node, inbound: list):
        info = node.info
        rule = rule_for(info)
        if rule is not None:
            try:
                return self._visit(node, info, rule, inbound)
            except SurgeryError as err:  # a rule that cannot describe this call (a
                problem = str(err)       # wrapper around a layer no rule knows)
        else:
            problem = f"no layer rule for {info.class_name}"
        reason = f"reaches {info.describe()}, which no layer rule supports"
        for ids in inbound:
            if ids is not None:
                self.skips.append((ids, reason))
        if getattr(node.layer, "weights", None):
            self.skipped_layers[info.name] = problem
        return self.new(_width(info.output_shape), f"produced by {info.describe()}")

    def _visit(self, node, info, rule, inbound: list):
        out_size = _width(info.output_shape)
        flow = rule.flow_of(info)
        first = inbound[0] if inbound else None
        if getattr(node.layer, "weights", None) and inbound:  # a shared layer reads every call's channels
            seen = self.calls.setdefault(info.name, inbound)  # through the same weights
            for a, b in zip(seen, inbound if seen is not inbound else ()):
                if a is not None and b is not None and len(a) == len(b):
                    self.unite([a, b])
        for i, ids in enumerate(inbound):  # inputs deletions cannot reach (attention masks)
            reason = rule.input_blocked(info, i) if ids is not None else None
            if reason:
                self.skips.append((ids, reason))
        self._units(info, rule)  # heads etc., whatever the layer does with its tensors
        if flow == PRODUCER:
            if info.name not in self.owner:
                self.owner[info.name] = (self.uf.new(rule.channels(info)), info.name)
                self.order.append(info.name)
            ids = self.owner[info.name][0]
            blocks = rule.blocks(info)
            if blocks > 1:
                self.blocks.append((ids, blocks))
                if first is not None:
                    self.blocks.append((first, blocks))
            return ids
        if first is None:
            return self.new(out_size, f"produced by {info.describe()}")
        if flow == CHANNELWISE:
            if rule.has_channel_weights(info):
                self.followers.append((first, info.name))
            if rule.inexact(info):
                self.approximate.append((first, info.name))
            return np.repeat(first, rule.multiplier(info))
        if flow == MERGE:
            live = [ids for ids, shape in zip(inbound, info.input_shapes)
                    if ids is not None and len(shape) and shape[-1] != 1]
            if not live:
                return first
            if len({len(ids) for ids in live}) != 1:
                reason = f"{info.describe()} merges channel axes of different sizes"
                for ids in live:
                    self.skips.append((ids, reason))
                return live[0]
            self.unite(live)
            return live[0]
        if flow == CONCAT:
            return np.concatenate(inbound)
        if flow == RESHAPE:
            return self._reshaped(info, first)
        if flow == MIXING and rule.reads_inputs(info):  # its outputs are not cut
            return self.new(out_size, f"produced by {info.describe()}")
        reason = rule.blocked(info) if flow == BLOCKING else \
            f"consumed by {info.describe()}, whose own channels no rule cuts"
        self.skips.append((first, reason))
        if flow == MIXING:
            self.skipped_layers[info.name] = reason
        return self.new(out_size, reason)

    def _units(self, info, rule) -> None:
        """One group per unit axis of the layer (its heads, its head widths)."""
        emptiable = set(rule.emptiable_axes(info))
        for axis, size in rule.unit_axes(info).items():
            group = ChannelGroup([info.name], int(size), axis=axis,
                                 blocks=rule.unit_blocks(info, axis),
                                 emptiable=axis in emptiable)
            group.channels = {info.name: [[i] for i in range(int(size))]}
            self.units.setdefault(group.name, group)

    def _reshaped(self, info, ids: np.ndarray) -> np.ndarray:
        full = np.broadcast_to(ids, concrete(info.input_shape[:-1]) + (len(ids),))
        out = full.reshape(concrete(info.output_shape)) if info.output_shape else \
            full.reshape(-1)
        rows = out.reshape(-1, out.shape[-1]) if out.ndim else out.reshape(1, 1)
        if not np.all(rows == rows[:1]):
            reason = f"channel axis reshaped by {info.describe()}"
            self.skips.append((ids, reason))
            return self.new(rows.shape[-1], reason)
        return rows[0].copy()

    # ---- turning components into groups ------------------------------------------------
    def groups(self) -> list[ChannelGroup]:
        find = self.uf.find
        components: dict[int, dict[str, list[int]]] = {}
        for name in self.order:
            ids = self.owner[name][0]
            for channel, i in enumerate(ids.tolist()):
                components.setdefault(find(i), {}).setdefault(name, []).append(channel)
        reasons: dict[int, str] = {}
        for ids, reason in self.skips:
            for i in ids.tolist():
                reasons.setdefault(find(i), reason)
        by_key: dict[tuple, list[int]] = {}
        for root, members in components.items():
            by_key.setdefault(tuple(members), []).append(root)
        position = {}
        result = []
        for members, roots in by_key.items():
            roots.sort(key=lambda r: components[r][members[0]][0])
            group = ChannelGroup(list(members), len(roots))
            group.channels = {m: [components[r][m] for r in roots] for m in members}
            group.skipped = next((reasons[r] for r in roots if r in reasons), None)
            for i, r in enumerate(roots):
                position[r] = (len(result), i)
            result.append(group)
        for ids, blocks in self.blocks:
            for g in {position[find(i)][0] for i in ids.tolist() if find(i) in position}:
                result[g].blocks = max(result[g].blocks, blocks)
        for ids, name in self.approximate:
            for g in {position[find(i)][0] for i in ids.tolist() if find(i) in position}:
                result[g].approximate.append(name)
        for ids, name in self.followers:
            hits = [position.get(find(i)) for i in ids.tolist()]
            if hits and all(h is not None and h[0] == hits[0][0] for h in hits) and \
                    [h[1] for h in hits] == list(range(result[hits[0][0]].size)):
                result[hits[0][0]].followers.append(name)
        return result + stacked_blocks(list(self.units.values()))


def stacked_blocks(units: list[ChannelGroup]) -> list[ChannelGroup]:
    """``units`` with the one-unit ``"blocks"`` axes of blocks that are layers of their
    own (:mod:`surgery.engine.rules.depth`) pooled into one group, block ``i`` its unit
    ``i``, so that blocks are ranked and removed against each other; a lone block, which
    a plan would keep anyway, offers none."""
    single = [g for g in units if g.axis == "blocks" and g.size == 1]
    rest = [g for g in units if not (g.axis == "blocks" and g.size == 1)]
    if len(single) < 2:
        return rest
    names = [g.producers[0] for g in single]
    stack = ChannelGroup(names, len(names), axis="blocks")
    stack.channels = {n: [[0] if j == i else [] for j in range(len(names))]
                      for i, n in enumerate(names)}
    return rest + [stack]


def analyse(graph: ModelGraph) -> tuple[list[ChannelGroup], dict[str, str]]:
    """The channel groups of a flat functional model's graph, and the layers left alone
    because no rule cuts their output channels (name -> reason)."""
    graph.require_functional()
    analysis = _Analysis()
    values = graph.walk(analysis.visit,
                        lambda t: analysis.new(_width(tuple(t.shape)), "model input"))
    for t in graph.outputs():
        ids = values.get(graph.key(t))
        if ids is not None:
            analysis.skips.append((ids, "reaches a model output"))
    return analysis.groups(), analysis.skipped_layers


def channel_groups(model) -> list[ChannelGroup]:
    """The coupled output-channel groups of a functional model.

    Example::

        for group in surgery.channel_groups(model):
            print(group.producers, group.size, group.skipped or "prunable")
    """
    return analyse(flattened(resolve(model, "channel_groups")))[0]
