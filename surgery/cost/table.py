"""Latency as a cost over group widths: measured tables, interpolated between grid widths.

This module owns :class:`LatencyTable` (one layer call's seconds on a grid of input and
output widths, interpolated piecewise-linearly in each width, extended linearly below the
grid and never negative) and :class:`LatencyEstimator`, the latency form of
:class:`surgery.cost.width.WidthModel`: the pruned model's predicted seconds are the
whole original model's measured seconds minus, for every call whose widths change, what
its table says the call saves (``T(full widths) - T(kept widths)``). Calls that follow one
width (a depthwise conv) get a one-dimensional table, calls whose input and output follow
different groups a 3 × 3 grid, calls with no prunable width none at all. A layer with unit
groups (a transformer block's heads and MLP width) gets a one-dimensional table per unit
axis, over the kept count of that axis with everything else whole (a head is timed like a
channel: the block rebuilt with fewer, by its rule), keyed ``"layer:axis"``; its savings add
to the channels'. Two axes whose costs multiply (a head count and a head width:
``LayerRule.interacting_axes``) also get a table over both counts, keyed ``"layer:a*b"``,
which adds what cutting both saves beyond the two one-axis tables. Tables come from :func:`surgery.cost.micro.measure` (cached on disk) or,
in tests, are given by hand.

>>> t = LatencyTable([8, 16], [8, 16], [[1.0, 2.0], [3.0, 4.0]])
>>> float(t(12, 12)), float(t(8, 32)), float(t(4, 8))
(2.5, 2.0, 0.0)
"""
from __future__ import annotations

import logging
from typing import Mapping, Optional, Sequence

import numpy as np

import surgery.cost.micro as micro
from surgery.cost.runtimes import _keras_of
from surgery.cost.width import WidthModel, call_widths
from surgery.engine.graph import ModelGraph

logger = logging.getLogger(__name__)

#: grid fractions of a width that one-dimensional tables measure
FRACTIONS_1D = (1.0, 0.6, 0.25)
#: ... and two-dimensional ones (in each width); beyond the grid, tables extrapolate
FRACTIONS_2D = (1.0, 0.4)
#: grid fractions of a unit axis (heads, MLP width) that unit tables measure
FRACTIONS_UNITS = (1.0, 0.5, 0.25)


def _weights(grid: np.ndarray, x: np.ndarray):
    """Indices and weights of the grid points around each ``x`` (the end segments extend
    linearly down to width 0; above the grid, the last value holds)."""
    x = np.clip(x, 0, grid[-1])
    hi = np.clip(np.searchsorted(grid, x), 1, max(len(grid) - 1, 1))
    lo = hi - 1
    if len(grid) == 1:
        zero = np.zeros_like(hi)
        return zero, zero, np.zeros_like(x, dtype=np.float64)
    w = (x - grid[lo]) / (grid[hi] - grid[lo])
    return lo, hi, w


class LatencyTable:
    """Seconds of one call at input width ``ins[a]`` and output width ``outs[b]``
    (``seconds[a][b]``); either axis may have one point."""

    def __init__(self, ins: Sequence[float], outs: Sequence[float], seconds):
        order_i, order_o = np.argsort(ins), np.argsort(outs)
        self.ins = np.asarray(ins, np.float64)[order_i]
        self.outs = np.asarray(outs, np.float64)[order_o]
        self.seconds = np.asarray(seconds, np.float64).reshape(
            len(ins), len(outs))[order_i][:, order_o]

    def __call__(self, i, o):
        i, o = np.asarray(i, np.float64), np.asarray(o, np.float64)
        a0, a1, wa = _weights(self.ins, i)
        b0, b1, wb = _weights(self.outs, o)
        s = self.seconds
        return np.maximum((1 - wa) * (1 - wb) * s[a0, b0] + (1 - wa) * wb * s[a0, b1]
                          + wa * (1 - wb) * s[a1, b0] + wa * wb * s[a1, b1], 0.0)


class LatencyEstimator(WidthModel):
    """Predicted seconds of ``model`` pruned to given group widths, in one runtime.

    ``whole``: measured seconds of the unpruned model; ``tables``: ``{call name:
    LatencyTable}`` (and ``{"layer:axis": LatencyTable}`` over a unit axis's kept count)
    given by hand, or ``None`` to measure them (``runtime``, ``batch``, ``threads``,
    ``block``: the grid's width step, ``cache``: a :class:`TableCache`). ``units``: the
    unit groups, as for :class:`~surgery.cost.width.WidthModel`. Predictions never fall
    below ``floor`` of ``whole``.

    Example::

        est = LatencyEstimator(graph, groups, whole=0.120, tables=my_tables)
        est.cost_of(p.removed) / est.total   # predicted latency ratio of plan p
    """

    unit = "latency"

    def __init__(self, graph: ModelGraph, groups: Sequence[tuple], *, whole: float,
                 tables: Optional[Mapping[str, LatencyTable]] = None, runtime=None,
                 batch: int = 1, threads: int = 1, block: int = 8, cache=None,
                 progress: bool = True, floor: float = 0.05, units: Sequence[tuple] = ()):
        super().__init__(graph, groups, units)
        self.total = float(whole)
        self.graph = graph
        self.floor = floor
        self.scale = 1.0  # on the predicted savings (the timing check calibrates it)
        self.tables = dict(tables) if tables is not None else \
            self._measure(graph, runtime, batch, threads, block, cache, progress)
        self._used = [(k, self.tables[info.name]) for k, (info, *_r) in enumerate(self.calls)
                      if info.name in self.tables]
        unit_tables = [(self.calls[c][0].name, g, self.tables[f"{self.calls[c][0].name}:{a}"])
                       for c, g, a in self.unit_calls
                       if f"{self.calls[c][0].name}:{a}" in self.tables]
        self._units = [(g, t) for _, g, t in unit_tables]
        self._pairs = [(ga, gb, self.tables[f"{self.calls[c][0].name}:{a}*{b}"])
                       for c, ga, gb, a, b in self.pair_calls
                       if f"{self.calls[c][0].name}:{a}*{b}" in self.tables]
        self._full = sum(float(t(*call_widths(self.calls[k][0]))) for k, t in self._used)
        # a unit table times its layer (or one block of it) at full size: count each layer
        # once, by its largest table (the "blocks" table times the whole encoder)
        whole_layers: dict = {}
        for name, g, t in unit_tables:
            whole_layers[name] = max(whole_layers.get(name, 0.0), float(t(self.sizes[g], 0)))
        self._covered = self._full + sum(whole_layers.values())

    def _measure(self, graph: ModelGraph, runtime, batch, threads, block, cache,
                 progress) -> dict:
        plans = {}
        entries = []
        chains = micro.cheap_followers(graph)
        for info, rule, in_row, out_row in self.calls:
            if not (np.any(in_row[:-1]) or np.any(out_row[:-1])) or not micro.measurable(info):
                continue
            i0, o0 = call_widths(info)
            tied = np.allclose(out_row * i0, in_row * o0)
            if tied or not np.any(out_row[:-1]):
                ins = micro.widths(i0, block, FRACTIONS_1D)
                pairs = [[(i, int(round(i * o0 / i0)) if tied else o0)] for i in ins]
                outs = None
            elif not np.any(in_row[:-1]):
                outs = micro.widths(o0, block, FRACTIONS_1D)
                ins, pairs = [i0], [[(i0, o) for o in outs]]
            else:
                ins = micro.widths(i0, block, FRACTIONS_2D)
                outs = micro.widths(o0, block, FRACTIONS_2D)
                pairs = [[(i, o) for o in outs] for i in ins]
            after = tuple(chains.get(info.name, ()))
            sigs = [[micro.signature(info, i, o, after) for i, o in row] for row in pairs]
            entries += [micro.channel_entry(info, i, o, after) for prow in pairs
                        for i, o in prow]
            plans[info.name] = (ins, outs, tied, i0, o0, sigs)
        units, pairs = self._unit_entries(graph), self._pair_entries(graph)
        entries += [e for _, _, sigs in units for e in sigs]
        entries += [e for _, _, _, rows in pairs for row in rows for e in row]
        if not entries:
            return {}
        seconds = micro.measure(entries, runtime, batch, threads, cache,
                                _keras_of(graph.model),
                                progress=progress)
        tables = {key: _Tied(kept, _monotone(kept, [seconds[s] for s, _ in sigs]), None)
                  for key, kept, sigs in units}
        for key, grid_a, grid_b, rows in pairs:
            tables[key] = LatencyTable(grid_a, grid_b, _monotone_grid(
                grid_a, grid_b, [[seconds[s] for s, _ in row] for row in rows]))
        for name, (ins, outs, tied, i0, o0, sigs) in plans.items():
            values = [[seconds[s] for s in row] for row in sigs]
            if outs is None:  # one point per input width; the output follows it (or not)
                tables[name] = _Tied(ins, [v[0] for v in values], o0 / i0 if tied else None)
            else:
                tables[name] = LatencyTable(ins, outs, values)
        return tables

    def _timed_layers(self, rows: Sequence[tuple], key_of):
        """``(table key, info, rule, row)`` for each of ``rows`` (``unit_calls`` or
        ``pair_calls``: a call index first) whose layer the unit tables can time, once per
        ``key_of(layer name, row)``."""
        seen = set()
        for row in rows:
            info, rule = self.calls[row[0]][0], self.calls[row[0]][1]
            key = key_of(info.name, row)
            if key not in seen and micro.measurable_units(info):
                seen.add(key)
                yield key, info, rule, row

    def _unit_entries(self, graph: ModelGraph) -> list:
        """``(table key, kept counts, entries)`` of every unit axis's table to measure."""
        out = []
        for key, info, rule, (_, g, axis) in self._timed_layers(
                self.unit_calls, lambda name, row: f"{name}:{row[2]}"):
            kept = _unit_grid(rule, info, axis, int(self.sizes[g]))
            out.append((key, kept, [micro.unit_entry(info, rule, {axis: k},
                                                     graph.adapter.new_layer) for k in kept]))
        return out

    def _pair_entries(self, graph: ModelGraph) -> list:
        """``(table key, kept counts of a, of b, entries by row)`` of every pair of
        interacting unit axes (a head count and a head width) to measure: a grid of both
        counts, whose edges (one axis whole) are the one-axis tables' own micro-models."""
        out = []
        for key, info, rule, (_, ga, gb, a, b) in self._timed_layers(
                self.pair_calls, lambda name, row: f"{name}:{row[3]}*{row[4]}"):
            grid_a = _unit_grid(rule, info, a, int(self.sizes[ga]))
            grid_b = _unit_grid(rule, info, b, int(self.sizes[gb]))
            out.append((key, grid_a, grid_b, [
                [micro.unit_entry(info, rule, {a: ka, b: kb}, graph.adapter.new_layer)
                 for kb in grid_b] for ka in grid_a]))
        return out

    def cost(self, kept):
        i, o = self.channels(kept)
        now = sum(t(i[..., k], o[..., k]) for k, t in self._used) if self._used else \
            np.full(np.shape(i)[:-1], self._full)
        saved = self._full - now
        if self._units:
            kept = np.asarray(kept, np.float64)
            saved = saved + sum(t(self.sizes[g], 0) - t(kept[..., g], 0)
                                for g, t in self._units)
            # what a cut in both of two interacting axes saves beyond their own tables
            saved = saved + sum(t(kept[..., a], self.sizes[b]) + t(self.sizes[a], kept[..., b])
                                - t(kept[..., a], kept[..., b]) - t(self.sizes[a], self.sizes[b])
                                for a, b, t in self._pairs)
        return np.maximum(self.total - self.scale * saved, self.floor * self.total)

    def summary(self) -> dict:
        """How much of the whole model's time the tables cover."""
        return dict(whole=self.total, tables=len(self._used) + len(self._units) + len(self._pairs),
                    covered=self._covered)


def _monotone(kept: Sequence[int], seconds: Sequence[float]) -> list:
    """``seconds`` never falling as ``kept`` grows: a unit table where fewer units took
    longer measured noise (a head saves tens of microseconds), and a negative saving
    would make the allocation shun the axis.

    >>> _monotone([4, 2, 1], [3.0, 3.5, 1.0])
    [3.5, 3.5, 1.0]
    """
    order = np.argsort(kept)
    fixed = np.maximum.accumulate(np.asarray(seconds, np.float64)[order])
    out = np.empty_like(fixed)
    out[order] = fixed
    return out.tolist()


def _unit_grid(rule, info, axis: str, size: int) -> list:
    """The kept counts a unit table of ``axis`` measures (whole numbers of its blocks)."""
    blocks = int(rule.unit_blocks(info, axis))
    empty = [0] if axis in rule.emptiable_axes(info) else []  # the layer without them
    return sorted({max(blocks, int(round(f * size / blocks)) * blocks)
                   for f in FRACTIONS_UNITS}.union(empty), reverse=True)


def _monotone_grid(grid_a: Sequence[int], grid_b: Sequence[int], seconds) -> list:
    """A two-axis table's ``seconds[i][j]`` never falling as either count grows
    (:func:`_monotone` along both axes).

    >>> _monotone_grid([4, 2], [8, 4], [[3.0, 2.0], [3.5, 1.0]])
    [[3.5, 2.0], [3.5, 1.0]]
    """
    fixed = np.array([_monotone(grid_b, row) for row in seconds], np.float64)
    return np.array([_monotone(grid_a, col) for col in fixed.T]).T.tolist()


class _Tied(LatencyTable):
    """A one-dimensional table over the input width (the output width follows it, or is
    fixed)."""

    def __init__(self, ins, seconds, ratio):
        super().__init__(ins, [0.0], [[s] for s in seconds])
        self.ratio = ratio

    def __call__(self, i, o):
        return super().__call__(i, np.zeros_like(np.asarray(i, np.float64)))
