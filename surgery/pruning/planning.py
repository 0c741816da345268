"""Planning: a flat model's groups and scores -> how many units each group keeps -> a plan.

This module owns :class:`PlanSpec` (what a plan is asked for: criterion, policy, ratio or
threshold, ``per_layer``, ``ignore``, rounding, scope, which unit axes) and
:class:`Ranking`: the channel groups of a flat model (:mod:`surgery.engine.groups`) and
their scores (:mod:`surgery.pruning.criteria`), computed once, from which
:meth:`Ranking.plan` makes a :class:`~surgery.pruning.plan.PrunePlan` for a ratio or a
threshold, group by group (``scope="local"``) or in one ranking across groups
(``"global"``), the members of each group reconciled by a policy
(:mod:`surgery.pruning.policies`). A budget's search (:mod:`surgery.pruning.allocation`)
asks one ranking for many plans. Output channels that reach a model output (the
classifier) are never pruned.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np

from surgery.engine.graph import ModelGraph
from surgery.engine.groups import ChannelGroup, analyse
from surgery.engine.rules import LayerRule, rule_for
from surgery.pruning.criteria import channel_scores
from surgery.pruning.criteria.units import unit_axis_wanted, unit_kind, unit_scores
from surgery.pruning.plan import CHANNELS, Cut, PrunePlan
from surgery.pruning import unit_scales
from surgery.pruning.policies import BelowThreshold, LowestK, get_policy, normalised


@dataclasses.dataclass(frozen=True, eq=False)
class PlanSpec:
    """What a plan is asked for (the arguments of :func:`surgery.plan` that shape it).

    ``ratio`` of each group's units goes (``scope="global"``: of all units, ranked
    across groups); with ``threshold``, instead every unit scoring below it;
    ``per_layer``: ratios for the groups containing the named layers; ``ignore``: layers
    whose groups are left alone; kept widths are multiples of ``round_to`` (an integer
    rounds channels, MLP widths and head widths, not heads; or one per kind of unit,
    ``{"channels": 8, "heads": 2, "mlp": 64}``, kinds not named unrounded) and never below
    ``min_channels`` (heads and blocks: at least one stays); ``heads`` / ``head_dims``
    turn attention heads and head widths on; ``depth`` whole residual blocks (a composite
    encoder's ``"blocks"`` axis, or pre-norm blocks that are layers of their own, pooled in
    one group); ``query_groups`` whole key/value groups of grouped-query
    attention (with their query heads; such a layer's heads then go only by groups);
    ``units=False`` leaves every unit axis alone (heads, head widths, block widths and
    blocks: channels only).
    """

    ratio: Optional[float] = 0.3
    criterion: Any = "l1"
    policy: str = "aggregate"
    threshold: Optional[float] = None
    per_layer: Mapping[str, float] = dataclasses.field(default_factory=dict)
    ignore: tuple = ()
    round_to: Union[int, Mapping[str, int]] = 1
    min_channels: int = 1
    scope: str = "local"
    data: Any = None
    heads: bool = True
    head_dims: bool = False
    exact: bool = True
    units: bool = True
    depth: bool = False
    query_groups: bool = False

    def replace(self, **changes) -> "PlanSpec":
        return dataclasses.replace(self, **changes)

    def multiple(self, axis: Optional[str] = None) -> int:
        """What kept widths of a group with unit ``axis`` (``None``: channels) are a
        multiple of.

        >>> spec = PlanSpec(round_to=8)
        >>> spec.multiple(), spec.multiple("heads"), spec.multiple("intermediate_dim")
        (8, 1, 8)
        >>> PlanSpec(round_to={"heads": 2}).multiple("encoder/block_0/heads")
        2
        """
        kind = unit_kind(axis)
        if isinstance(self.round_to, Mapping):
            return int(self.round_to.get(kind, 1))
        return 1 if kind in ("heads", "query_groups", "blocks") else int(self.round_to or 1)

    def minimum(self, axis: Optional[str] = None) -> int:
        """The fewest units a group with unit ``axis`` keeps: ``min_channels`` for
        channels and widths, one head, one block.

        >>> PlanSpec(min_channels=2).minimum(), PlanSpec(min_channels=2).minimum("blocks")
        (2, 1)
        """
        return 1 if unit_kind(axis) in ("heads", "query_groups", "blocks") else \
            self.min_channels

    @property
    def criterion_name(self) -> str:
        c = self.criterion
        return c if isinstance(c, str) else getattr(c, "__name__", str(c))

    def settings(self) -> dict:
        """The plan's ``settings``: what it was made with."""
        return dict(ratio=self.ratio, criterion=self.criterion_name, policy=self.policy,
                    threshold=self.threshold, per_layer=dict(self.per_layer),
                    ignore=list(self.ignore), round_to=dict(self.round_to) if
                    isinstance(self.round_to, Mapping) else self.round_to,
                    min_channels=self.min_channels, scope=self.scope, heads=self.heads,
                    head_dims=self.head_dims, depth=self.depth,
                    query_groups=self.query_groups, exact=self.exact)


def keep_count(size: int, ratio: float, round_to: int, min_channels: int, blocks: int) -> int:
    """How many of ``size`` units a group keeps at ``ratio``: rounded up to ``round_to``,
    at least ``min_channels``, a multiple of ``blocks`` (grouped convolutions).

    >>> keep_count(32, 0.3, 8, 1, 1), keep_count(32, 0.99, 1, 4, 1), keep_count(30, 0.5, 1, 1, 4)
    (24, 4, 16)
    >>> keep_count(4, 0.95, 1, 0, 1), keep_count(4, 1.0, 1, 0, 1)  # a group that may empty
    (1, 0)
    """
    keep = size - math.floor(size * ratio + 1e-9)
    keep = math.ceil(keep / round_to) * round_to
    keep = max(keep, min_channels, blocks if min_channels else 0)  # 0: may keep none
    keep = math.ceil(keep / blocks) * blocks
    return min(size, keep)


def _labels(groups) -> list[str]:
    """A unique name per group: its first producer, with the channels it holds when that
    producer is split between groups."""
    counts: dict[str, int] = {}
    for g in groups:
        counts[g.name] = counts.get(g.name, 0) + 1
    labels = []
    for g in groups:
        if counts[g.name] > 1:
            rows = g.channels[g.name]
            labels.append(f"{g.name}[{rows[0][0]}:{rows[-1][-1] + 1}]")
        else:
            labels.append(g.name)
    return labels


def _scored_followers(graph: ModelGraph, groups) -> list[str]:
    """The first follower of each group that criteria can score (a depthwise conv)."""
    infos = {n.layer.name: n.info for n in graph.calls()}
    names = []
    for g in groups:
        for f in g.followers:
            if type(rule_for(infos[f])).filter_matrix is not LayerRule.filter_matrix:
                names.append(f)
                break
    return names


def _mean_rows(scores: np.ndarray, rows) -> np.ndarray:
    """The mean of ``scores`` over each row of indices (one group unit's channels).

    >>> _mean_rows(np.array([1.0, 2.0, 4.0]), [[0], [1, 2]]).tolist()
    [1.0, 3.0]
    """
    lengths = np.array([len(r) for r in rows])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.add.reduceat(scores[np.concatenate(rows)], starts) / lengths


def _trim(chosen, combined: np.ndarray, size: int, round_to: int, min_channels: int,
          blocks: int) -> np.ndarray:
    """Threshold mode: give back the best-scored channels until the budget rules hold."""
    order = sorted((int(c) for c in chosen), key=lambda c: combined[c])  # worst first
    n_delete = size - keep_count(size, len(order) / size, round_to, min_channels, blocks)
    if blocks == 1:
        return np.sort(np.array(order[:n_delete], int))
    width = size // blocks
    by_block = [[c for c in order if c // width == b] for b in range(blocks)]
    per_block = min(n_delete // blocks, min(len(b) for b in by_block))
    return np.sort(np.array([c for b in by_block for c in b[:per_block]], int))


class Ranking:
    """The prunable groups of a flat model and their scores, computed once.

    ``groups``: the channel groups to plan (``labels`` names them), then the unit-axis
    groups the spec's ``heads`` / ``head_dims`` turn on; ``skipped``: group or layer ->
    why it is left alone (``skipped_sizes`` their widths); ``scores``: layer (or
    ``"layer:axis"``) -> the criterion's scores. ``transform`` (per layer name, e.g. a
    candidate's perturbation) applies to every score read; ``kind_weight`` (per kind of
    unit: ``"channels"``, ``"heads"``, ``"mlp"``, ...) multiplies a group's normalised
    scores, so that one kind of unit weighs more or less against the others.
    """

    def __init__(self, graph: ModelGraph, spec: PlanSpec,
                 transform: Optional[Callable[[str, np.ndarray], np.ndarray]] = None):
        self.graph, self.spec, self.transform = graph, spec, transform
        self.kind_weight: Optional[Callable[[str], float]] = None
        groups, skipped_layers = analyse(graph)
        labels = dict(zip(map(id, groups), _labels(groups)))
        self.skipped: dict[str, str] = {}
        self.skipped_sizes: dict[str, int] = {}
        active: list[ChannelGroup] = []
        for g in groups:
            if g.axis is not None and not (spec.units and unit_axis_wanted(
                    g.axis, spec.heads, spec.head_dims, spec.depth, spec.query_groups)):
                continue
            hit = set(spec.ignore) & set(g.producers + g.followers)
            if g.skipped or hit:
                self.skipped[labels[id(g)]] = g.skipped or f"ignored ({', '.join(sorted(hit))})"
                self.skipped_sizes[labels[id(g)]] = g.size
            else:
                active.append(g)
        self.skipped.update(skipped_layers)
        # a layer losing whole key/value groups keeps the query heads of those it keeps:
        # cutting both would count the heads of a removed group twice
        grouped = {g.producers[0] for g in active if g.axis is not None
                   and unit_kind(g.axis) == "query_groups"}
        active = [g for g in active if not (g.axis is not None and g.producers[0] in grouped
                                            and unit_kind(g.axis) == "heads")]
        self.groups = [g for g in active if g.axis is None] + \
            [g for g in active if g.axis is not None]
        self.labels = [labels[id(g)] for g in self.groups]
        self.scores = self._score()
        self._read: dict = {}  # what the search reads many times, worked out once
        self._unit_sizes: dict = {}  # per layer: its units' sizes (shared by with_transform)

    def _score(self) -> dict[str, np.ndarray]:
        spec, channels = self.spec, [g for g in self.groups if g.axis is None]
        names = list(dict.fromkeys(p for g in channels for p in g.producers))
        if spec.policy == "depthwise":
            names += [n for n in _scored_followers(self.graph, channels) if n not in names]
        scores = channel_scores(self.graph, names, spec.criterion, spec.data) if names else {}
        units = [(p, g.axis) for g in self.groups if g.axis is not None for p in g.producers]
        if units:
            scores.update(unit_scores(self.graph, units, spec.criterion, spec.data))
        for g in self.groups:  # blocks that are layers of their own: one unit each
            if g.axis is not None and len(g.producers) > 1:
                scores[g.name] = np.concatenate([scores[f"{p}:{g.axis}"] for p in g.producers])
        return scores

    def with_transform(self, transform, kind_weight: Optional[Callable[[str], float]] = None
                       ) -> "Ranking":
        """This ranking with ``transform(layer, scores)`` applied to every score read, and
        each group's normalised scores multiplied by ``kind_weight(kind of its units)``."""
        other = object.__new__(Ranking)
        other.__dict__.update(self.__dict__, transform=transform, kind_weight=kind_weight,
                              _read={})
        return other

    def _once(self, key, make: Callable):
        if key not in self._read:
            self._read[key] = make()
        return self._read[key]

    def score(self, name: str) -> np.ndarray:
        """The scores of layer (or ``"layer:axis"``) ``name``, transformed, as float64."""
        def read():
            s = np.asarray(self.scores[name], np.float64)
            return s if self.transform is None else np.asarray(self.transform(name, s))
        return self._once(("score", name), read)

    def width_groups(self) -> list[tuple]:
        """``(label, producers, size)`` of each channel group, for a cost model."""
        return [(label, list(g.producers), g.size)
                for label, g in zip(self.labels, self.groups) if g.axis is None]

    def unit_groups(self) -> list[tuple]:
        """``(label, layer, axis, size)`` of each unit group (heads, block widths), for a
        cost model; they follow the channel groups, as in ``groups``."""
        return [(label, g.producers[0], g.axis, g.size)
                for label, g in zip(self.labels, self.groups) if g.axis is not None]

    def block_members(self, index: int) -> list[list[int]]:
        """For a ``"blocks"`` unit group, the unit groups inside each of its blocks, in
        the order the blocks are removed (lowest combined score first); else ``[]``."""
        g = self.groups[index]
        if g.axis is None or unit_kind(g.axis) != "blocks":
            return []
        nodes = {n.layer.name: n for n in self.graph.calls()}
        at = {(h.producers[0], h.axis): i for i, h in enumerate(self.groups)}

        def inside(b: int) -> list[int]:  # block b: of one encoder, or a layer of its own
            layer, block = (g.producers[b], 0) if len(g.producers) > 1 else (g.producers[0], b)
            info = nodes[layer].info
            return [at[(layer, a)] for a in rule_for(info).block_axes(info, block)
                    if (layer, a) in at]
        return [inside(int(b)) for b in np.argsort(self.combined(index), kind="stable")]

    def member_scores(self, index: int, policy: str) -> dict[str, np.ndarray]:
        """One score per unit of group ``index`` for each member (a producer split between
        groups contributes the channels it has in this group)."""
        return self._once(("members", index, policy), lambda: self._members(index, policy))

    def _members(self, index: int, policy: str) -> dict[str, np.ndarray]:
        group = self.groups[index]
        if group.axis is not None:
            return {group.name: self.score(group.name)}
        members = {p: _mean_rows(self.score(p), group.channels[p]) for p in group.producers}
        if policy == "depthwise" and group.followers:
            dw = [f for f in group.followers if f in self.scores and
                  np.size(self.scores[f]) % group.size == 0]
            if dw:
                raw = np.asarray(self.score(dw[0]), np.float64)
                members[dw[0]] = raw.reshape(group.size, -1).sum(axis=1)
        return members

    def combined(self, index: int) -> np.ndarray:
        """Group ``index``'s units' scores, its members' normalised scores averaged (the
        members scoring every unit; else the unit order)."""
        g = self.groups[index]
        weight = 1.0 if self.kind_weight is None else self.kind_weight(unit_kind(g.axis))
        if g.axis is not None:
            scale = self._kind_mean(index)
            return (self.score(g.name) / scale if scale > 0 else 0 * self.score(g.name)) \
                * weight
        whole = [p for p in g.producers if np.size(self.scores[p]) == g.size]
        if not whole:
            return np.arange(g.size, dtype=np.float64)
        return sum(normalised(self.score(p)) for p in whole) / len(whole) * weight

    def unit_weight(self, index: int) -> float:
        """What group ``index``'s normalised importance is multiplied by where steps are
        priced per unit of cost (:func:`surgery.pruning.unit_scales.unit_weight`)."""
        return self._once(("unit weight", index),
                          lambda: unit_scales.unit_weight(self, index, self._unit_sizes))

    def _kind_mean(self, index: int) -> float:
        g = self.groups[index]
        return self._once(("kind mean", tuple(g.producers), unit_scales.unit_name(g.axis)),
                          lambda: unit_scales.kind_mean(self, index))

    def plan(self, spec: PlanSpec) -> PrunePlan:
        """The plan for ``spec``'s ratio (or threshold), ``per_layer`` and scope."""
        policy_fn = get_policy(spec.policy)
        global_keep = self._global_keep_counts(spec) \
            if spec.scope == "global" and spec.threshold is None else {}
        cuts = []
        for index, (label, g) in enumerate(zip(self.labels, self.groups)):
            members = self.member_scores(index, spec.policy)
            depthwise = next((m for m in members if m not in g.producers), None)
            if spec.threshold is not None:
                proposer = BelowThreshold(spec.threshold)
                chosen = _trim(np.asarray(policy_fn(members, proposer, depthwise), int),
                               proposer.combine(members), g.size, spec.multiple(g.axis),
                               spec.minimum(g.axis), g.blocks)
            else:
                keys = [label] if label in spec.per_layer else g.producers
                ratio = max((spec.per_layer[p] for p in keys if p in spec.per_layer),
                            default=spec.ratio)
                keep = global_keep.get(index) or keep_count(
                    g.size, ratio, spec.multiple(g.axis),
                    0 if g.emptiable else spec.minimum(g.axis), g.blocks)
                chosen = policy_fn(members, LowestK(g.size - keep, g.blocks), depthwise)
            cuts.append(self._cut(label, g, chosen))
        result = PrunePlan(cuts, dict(self.skipped), spec.settings(), dict(self.skipped_sizes))
        approximate = [n for c, g in zip(cuts, self.groups) if c.removed
                       for n in g.approximate]
        if approximate:
            result.settings["approximate"] = list(dict.fromkeys(approximate))
        return result

    @staticmethod
    def _cut(label: str, g: ChannelGroup, chosen) -> Cut:
        chosen = sorted(int(c) for c in chosen)
        return Cut(label, CHANNELS if g.axis is None else g.axis, g.size, len(chosen),
                   {p: g.member_channels(p, chosen) for p in g.producers})

    def _global_keep_counts(self, spec: PlanSpec) -> dict[int, int]:
        """One ranking across channel groups: how many units each keeps."""
        channel = [i for i, g in enumerate(self.groups) if g.axis is None]
        budget = math.floor(sum(self.groups[i].size for i in channel) * spec.ratio)
        lost = dict.fromkeys(channel, 0)
        for i in self._once(("global",), lambda: self._global_order(channel))[:budget]:
            lost[i] += 1
        return {i: keep_count(self.groups[i].size, lost[i] / self.groups[i].size,
                              spec.multiple(), spec.min_channels, self.groups[i].blocks)
                for i in channel}

    def _global_order(self, channel: list) -> list:
        """The group of every channel, lowest normalised score first (ties: lower group)."""
        ranked = []
        for i in channel:
            combined = LowestK(0).combine(self.member_scores(i, "aggregate"))
            ranked += [(float(s), i) for s in combined]
        return [i for _, i in sorted(ranked)]
