"""Channel counts and FLOPs of a model as functions of its channel groups' kept widths.

This module owns :class:`WidthModel`, which walks a model's graph once and expresses the
channel count of every tensor as an affine function of the kept widths of its prunable
channel groups, so a cost over group widths is cheap to evaluate for many candidate widths
at once, and :class:`FlopsEstimator`, the exact polynomial that :func:`surgery.count_flops`
would report for the pruned model. It answers "what does this width cost"; the allocation
that searches over it lives in :mod:`surgery.pruning.allocation`, and the latency cost
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


def call_widths(info) -> tuple:
    """The input and output channel counts of one call, as built."""
    i0 = int(info.input_shapes[0][-1]) if len(info.input_shapes[0]) else 1
    return i0, int(info.output_shape[-1]) if info.output_shape else 1


class WidthModel:
    """The costed calls of a model as affine functions of its groups' kept widths.

    ``groups`` names the prunable channel groups, each ``(label, producers, size)``.
    Each tensor's channel count is ``coef @ [kept widths..., 1]``; ``calls`` lists, for
    every call with FLOPs, ``(info, rule, in_row, out_row)``: its :class:`LayerInfo`, its
    rule and the rows giving its input and output channel counts. Subclasses define
    :meth:`cost` (and ``total``, the cost of the unpruned model).
    """

    #: what the cost counts, for messages
    unit = "cost"

    def __init__(self, graph: ModelGraph, groups: Sequence[tuple]):
        self.labels = [str(label) for label, _, _ in groups]
        self.groups = [list(producers) for _, producers, _ in groups]
        n = len(self.groups) + 1  # last entry: the constant term
        self.sizes = np.array([float(size) for _, _, size in groups])
        membership: dict[str, list[int]] = {}
        for i, members in enumerate(self.groups):
            for p in members:
                membership.setdefault(p, []).append(i)

        def constant(channels: int) -> np.ndarray:
            v = np.zeros(n)
            v[-1] = channels
            return v

        self.calls = []

        def visit(node, in_vecs):
            info = node.info
            rule = rule_for(info)
            out_ch = int(info.output_shape[-1]) if info.output_shape else 1
            ins = [int(s[-1]) if len(s) else 1 for s in info.input_shapes]
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
            if rule is not None and ins and rule.flops(info):
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
    channel counts, with the coefficients read off the layer rules at the unpruned widths.

    Example::

        est = FlopsEstimator(graph, [(g.name, g.producers, g.size) for g in groups])
        est.cost_of(p.removed) == surgery.count_flops(surgery.apply(model, p))
    """

    unit = "FLOPs"

    def __init__(self, graph: ModelGraph, groups: Sequence[tuple]):
        super().__init__(graph, groups)
        coefs = []
        for info, rule, in_row, out_row in self.calls:
            i0, o0 = call_widths(info)

            def m(i, o):
                return _call_flops(info, rule, i, o) / 2

            f00, f10, f01, f11 = m(i0, o0), m(2 * i0, o0), m(i0, 2 * o0), m(2 * i0, 2 * o0)
            a = (f11 - f10 - f01 + f00) / (i0 * o0)
            b = (f10 - f00) / i0 - a * o0
            c = (f01 - f00) / o0 - a * i0
            d = f00 - a * i0 * o0 - b * i0 - c * o0
            coefs.append((a, b, c, d))
        self._abcd = np.array(coefs).reshape(-1, 4)
        self.total = self.flops(self.sizes)

    def flops(self, kept) -> float:
        """FLOPs with group ``g`` keeping ``kept[g]`` channels; ``kept`` may be a matrix of
        rows (one estimate per row)."""
        i, o = self.channels(kept)
        a, b, c, d = self._abcd.T
        return 2 * (a * i * o + b * i + c * o + d).sum(axis=-1)

    cost = flops
