"""Channel counts and FLOPs of a model as functions of its groups' kept widths.

This module owns :class:`WidthModel`, which walks a model's graph once and expresses the
channel count of every tensor as an affine function of the kept widths of its prunable
channel groups, so a cost over group widths is cheap to evaluate for many candidate widths
at once, and :class:`FlopsEstimator`, the exact polynomial that :func:`surgery.count_flops`
would report for the pruned model. Units that no tensor carries (attention heads, the
feed-forward width of a transformer block: *unit groups*) are further widths of the same
model: each adds, to the calls of its layer, a cost linear in its kept count, read off the
layer's rule by cutting one unit (:func:`unit_cost_terms`). It answers "what does this
width cost"; the allocation that searches over it lives in
:mod:`surgery.pruning.allocation`, and the latency cost
(:class:`surgery.cost.table.LatencyEstimator`) is another subclass.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from surgery.engine.graph import ModelGraph
from surgery.engine.rules import CONCAT, PRODUCER, rule_for


def _call_flops(info, rule, in_channels: int, out_channels: int) -> float:
    """The rule's FLOPs of one call with other input and output channel counts."""
    config = dict(info.config)
    for key in ("filters", "units"):
        if key in config:
            config[key] = out_channels
    changed = dataclasses.replace(
        info, config=config,
        input_shapes=[tuple(s[:-1]) + (in_channels,) for s in info.input_shapes],
        output_shape=tuple(info.output_shape[:-1]) + (out_channels,))
    return float(rule.flops(changed))


def _bilinear(m, i0: int, o0: int) -> tuple:
    """``(a, b, c, d)`` with ``m(i, o) == a*i*o + b*i + c*o + d``, from four values of
    ``m``, a function bilinear in its input and output channel counts."""
    f00, f10, f01, f11 = m(i0, o0), m(2 * i0, o0), m(i0, 2 * o0), m(2 * i0, 2 * o0)
    a = (f11 - f10 - f01 + f00) / (i0 * o0)
    b = (f10 - f00) / i0 - a * o0
    c = (f01 - f00) / o0 - a * i0
    return a, b, c, f00 - a * i0 * o0 - b * i0 - c * o0


def unit_cost_terms(info, rule, axis: str, cost) -> tuple:
    """What one unit of ``axis`` adds to ``cost(info)`` (a rule's FLOPs of one call, with
    other input and output channel counts: ``cost(info, i, o)``), as the ``(a, b, c, d)``
    of :func:`_bilinear`: the call without one unit, from the rule's own ``cut_units``."""
    fewer = info.replaced(*rule.cut_units(info, {axis: [0]}))
    i0, o0 = call_widths(info)
    return _bilinear(lambda i, o: cost(info, i, o) - cost(fewer, i, o), i0, o0)


def pair_cost_terms(info, rule, axes: tuple, cost) -> tuple:
    """What losing one unit of each of two interacting axes (``rule.interacting_axes``)
    changes beyond their own :func:`unit_cost_terms`: ``cost`` of the call, less the call
    without one unit of either, plus the call without one of each; as ``(a, b, c, d)``."""
    first, second = axes

    def without(*cut_axes):
        return info.replaced(*rule.cut_units(info, {a: [0] for a in cut_axes}))
    fewer_a, fewer_b, fewer_both = without(first), without(second), without(first, second)
    i0, o0 = call_widths(info)
    return _bilinear(lambda i, o: cost(info, i, o) - cost(fewer_a, i, o) - cost(fewer_b, i, o)
                     + cost(fewer_both, i, o), i0, o0)


def call_widths(info) -> tuple:
    """The input and output channel counts of one call, as built."""
    return last_axis(info.input_shapes[0]), last_axis(info.output_shape)


def last_axis(shape) -> int:
    """A shape's channel count; 1 for a scalar per position or an unknown last axis (a
    token sequence of any length), which no group prunes."""
    return int(shape[-1]) if shape is not None and len(shape) and shape[-1] is not None \
        else 1


def shaped(info):
    """``info`` with weights of the same shapes and dtypes that hold no memory (every entry
    one zero): costs read shapes only, and a cost model that keeps every call described
    would otherwise hold a whole copy of the model's weights."""
    return info.replaced(info.config, [
        np.lib.stride_tricks.as_strided(np.zeros(1, w.dtype), w.shape, (0,) * w.ndim)
        for w in info.weights])


class WidthModel:
    """The costed calls of a model as affine functions of its groups' kept widths.

    ``groups`` names the prunable channel groups, each ``(label, producers, size)``;
    ``units`` the unit groups, each ``(label, layer, axis, size)``, numbered after the
    channel groups. Each tensor's channel count is ``coef @ [kept widths..., 1]``;
    ``calls`` lists, for every call with FLOPs, ``(info, rule, in_row, out_row)``: its
    :class:`LayerInfo`, its rule and the rows giving its input and output channel counts;
    ``unit_calls`` lists ``(call index, unit group index, axis)`` for every call of a
    layer with a unit group; ``layers`` each layer's first call as ``(info, rule,
    in_rows, out_row, units)`` (``units``: its ``(unit group index, axis)`` pairs), for
    costs of the layer rather than of its calls. Subclasses define :meth:`cost` (and
    ``total``, the cost of the unpruned model).
    """

    #: what the cost counts, for messages
    unit = "cost"

    def __init__(self, graph: ModelGraph, groups: Sequence[tuple],
                 units: Sequence[tuple] = ()):
        self.labels = [str(label) for label, _, _ in groups] + \
            [str(label) for label, _, _, _ in units]
        self.groups = [list(producers) for _, producers, _ in groups] + \
            [[layer] for _, layer, _, _ in units]
        n = len(self.groups) + 1  # last entry: the constant term
        self.sizes = np.array([float(size) for _, _, size in groups] +
                              [float(size) for _, _, _, size in units])
        membership: dict[str, list[int]] = {}
        for i, members in enumerate(self.groups[:len(groups)]):
            for p in members:
                membership.setdefault(p, []).append(i)
        unit_axes: dict[str, list] = {}
        for i, (_, layer, axis, _) in enumerate(units):
            unit_axes.setdefault(layer, []).append((len(groups) + i, axis))
        self.unit_calls: list[tuple] = []
        #: ``(call or layer row, group a, group b, (a, b, c, d))`` of each pair of unit
        #: groups of one layer whose costs multiply (filled by the subclasses)
        self.pair_terms: list[tuple] = []
        self._pair_arrays = None  # pair_terms as arrays, made by the first pairs() call
        self.pair_calls: list[tuple] = []  # (call index, group a, group b, axis a, axis b)

        def constant(channels: int) -> np.ndarray:
            v = np.zeros(n)
            v[-1] = channels
            return v

        self.calls, self.layers, seen = [], [], set()

        def visit(node, in_vecs):
            info = shaped(node.info)  # kept below: shapes only, never the model's weights
            rule = rule_for(info)
            out_ch = last_axis(info.output_shape)
            ins = [last_axis(s) for s in info.input_shapes]
            in_vecs = [constant(c) if v is None else v for v, c in zip(in_vecs, ins)]
            flow = rule.flow_of(info) if rule is not None else None
            if flow == PRODUCER and info.name in membership:
                out = constant(out_ch)
                for g in membership[info.name]:
                    out[g] += 1.0
                    out[-1] -= self.sizes[g]
            elif rule is None or flow == PRODUCER:
                out = constant(out_ch)
            elif flow == CONCAT and rule.concat_axis(info) == len(info.output_shape) - 1:
                out = np.sum(in_vecs, axis=0)
            else:
                live = [(v, c) for v, c in zip(in_vecs, ins) if np.any(v[:-1])]
                out = constant(out_ch) if not live else live[0][0] * (out_ch / live[0][1])
            if info.name not in seen:
                seen.add(info.name)
                self.layers.append((info, rule, in_vecs, out, unit_axes.get(info.name, [])))
            if rule is not None and ins and rule.flops(info):
                self.unit_calls += [(len(self.calls), g, axis)
                                    for g, axis in unit_axes.get(info.name, ())]
                group = {axis: g for g, axis in unit_axes.get(info.name, ())}
                self.pair_calls += [(len(self.calls), group[a], group[b], a, b)
                                    for a, b in rule.interacting_axes(info)
                                    if a in group and b in group]
                self.calls.append((info, rule, in_vecs[0], out))
            return out

        graph.walk(visit, lambda t: None)
        self._in = np.array([c[2] for c in self.calls]).reshape(-1, n)
        self._out = np.array([c[3] for c in self.calls]).reshape(-1, n)

    def channels(self, kept) -> tuple:
        """The input and output channel counts of every call (rows of ``kept`` -> rows)."""
        kept = np.asarray(kept, np.float64)
        full = np.concatenate([kept, np.ones(kept.shape[:-1] + (1,))], axis=-1)
        return full @ self._in.T, full @ self._out.T

    def cost(self, kept):  # pragma: no cover  (abstract)
        raise NotImplementedError

    def pairs(self, kept, i, o):
        """The :attr:`pair_terms`' share of the cost at ``kept``, with ``i`` and ``o`` the
        input and output channel counts of the rows the terms belong to."""
        if not self.pair_terms:
            return 0.0
        if self._pair_arrays is None:  # pair_terms are set once, by the subclass
            groups = [np.array([t[k] for t in self.pair_terms], int) for k in (1, 2)]
            self._pair_arrays = (np.array([r for r, _, _, _ in self.pair_terms], int), groups,
                                 np.array([t for _, _, _, t in self.pair_terms]).reshape(-1, 4).T)
        rows, groups, (a, b, c, d) = self._pair_arrays
        kept = np.asarray(kept, np.float64)
        gone = [kept[..., g] - self.sizes[g] for g in groups]
        i, o = i[..., rows], o[..., rows]
        return (gone[0] * gone[1] * (a * i * o + b * i + c * o + d)).sum(axis=-1)

    def kept(self, removed: dict) -> np.ndarray:
        """The kept width of every group when group ``label`` loses ``removed[label]``
        units (a plan's ``removed``; groups not named keep all)."""
        return np.array([self.sizes[g] - removed.get(label, 0)
                         for g, label in enumerate(self.labels)])

    def cost_of(self, removed: dict) -> float:
        """The cost when groups lose ``removed`` units (label -> count)."""
        return float(self.cost(self.kept(removed)))


class FlopsEstimator(WidthModel):
    """Exact :func:`surgery.count_flops` of a model pruned to given group widths: each
    counted call's FLOPs is ``A·in·out + B·in + C·out + D`` of its input and output
    channel counts, with the coefficients read off the layer rules at the unpruned widths,
    plus, for each unit group of its layer, ``(kept - size)`` times such a term (what one
    unit costs). Exact where each unit axis's FLOPs are linear in its count alone: heads
    and feed-forward widths; a head's width multiplies with the head count, and each such
    pair of axes (``LayerRule.interacting_axes``) adds a term in both counts, so a plan
    cutting both is exact too.

    Example::

        est = FlopsEstimator(graph, [(g.name, g.producers, g.size) for g in groups])
        est.cost_of(p.removed) == surgery.count_flops(surgery.apply(model, p))
    """

    unit = "FLOPs"

    def __init__(self, graph: ModelGraph, groups: Sequence[tuple],
                 units: Sequence[tuple] = ()):
        super().__init__(graph, groups, units)

        def half(info, rule):
            return lambda i, o: _call_flops(info, rule, i, o) / 2
        self._abcd = np.array([_bilinear(half(info, rule), *call_widths(info))
                               for info, rule, _, _ in self.calls]).reshape(-1, 4)
        self._unit_abcd = np.array([
            unit_cost_terms(self.calls[c][0], self.calls[c][1], axis,
                            lambda info, i, o, rule=self.calls[c][1]:
                            _call_flops(info, rule, i, o) / 2)
            for c, _, axis in self.unit_calls]).reshape(-1, 4)
        self._unit_call = np.array([c for c, _, _ in self.unit_calls], int)
        self._unit_group = np.array([g for _, g, _ in self.unit_calls], int)
        self.pair_terms = [(c, ga, gb, pair_cost_terms(
            self.calls[c][0], self.calls[c][1], (a, b),
            lambda info, i, o, rule=self.calls[c][1]: _call_flops(info, rule, i, o) / 2))
            for c, ga, gb, a, b in self.pair_calls]
        self.total = self.flops(self.sizes)

    def flops(self, kept) -> float:
        """FLOPs with group ``g`` keeping ``kept[g]`` channels; ``kept`` may be a matrix of
        rows (one estimate per row)."""
        i, o = self.channels(kept)
        a, b, c, d = self._abcd.T
        total = (a * i * o + b * i + c * o + d).sum(axis=-1)
        if len(self._unit_call):
            kept = np.asarray(kept, np.float64)
            i, o = i[..., self._unit_call], o[..., self._unit_call]
            a, b, c, d = self._unit_abcd.T
            gone = kept[..., self._unit_group] - self.sizes[self._unit_group]
            total = total + (gone * (a * i * o + b * i + c * o + d)).sum(axis=-1)
        return 2 * (total + self.pairs(kept, *self.channels(kept)))

    cost = flops
