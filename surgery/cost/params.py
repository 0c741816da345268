"""Parameter counts of a model as a function of its groups' kept widths.

This module owns :class:`ParamsEstimator`, the cost model of ``surgery.plan(model,
params_target=F)``: the exact ``count_params()`` of the model pruned to given channel
group and unit group widths (:class:`~surgery.cost.width.WidthModel`). A layer's
parameters are bilinear in its input and output channel counts (a kernel is ``in × out``,
a bias or a norm's scale ``out``, a depthwise kernel ``in``), and each unit (a head, a
feed-forward unit) adds a term of the same form. The coefficients are read by cutting one
channel, or one unit, with the layer's own rule (:func:`surgery.engine.cutting.cut`) and
counting what is left, so no layer's parameter formula is written twice.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from surgery.cost.width import WidthModel, last_axis
from surgery.engine.cutting import cut
from surgery.engine.graph import ModelGraph
from surgery.engine.rules import PRODUCER
from surgery.engine.rules.base import concrete
from surgery.errors import SurgeryError


def _count(info, drop_in: list, drop_out: bool, units: tuple) -> float:
    """``info``'s parameters after losing channel 0 of the inputs ``drop_in`` (indices),
    output channel 0 (``drop_out``) and unit 0 of each axis in ``units``."""
    masks = [None] * len(info.input_shapes)
    for k in drop_in:
        masks[k] = np.ones(concrete(info.input_shapes[k]), bool)
        masks[k][..., 0] = False
    replacement, _ = cut(info, masks, [0] if drop_out else None,
                         units={unit: [0] for unit in units} or None)
    if replacement is not None and not isinstance(replacement, tuple):
        raise SurgeryError(f"params_target: layer {info.describe()} is cut by an old-style "
                           "handler, whose parameters cannot be predicted; plan with "
                           "flops_target= or ratio= instead")
    weights = info.weights if replacement is None else replacement[1]
    return float(sum(np.size(w) for w in weights))


def unit_params(info, axis: str) -> float:
    """The parameters one unit of ``info``'s unit ``axis`` holds: what the layer loses when
    its rule cuts one (a head: its query, key, value and output weights)."""
    return _count(info, [], False, ()) - _count(info, [], False, (axis,))


def _emptied(info, axis: str, size: int) -> float:
    """``info``'s parameters with every unit of ``axis`` gone (an emptiable axis: the
    layer rebuilt without it may drop more than its units' weights, such as the norm
    before a block's attention)."""
    replacement, _ = cut(info, [None] * len(info.input_shapes), None,
                         units={axis: list(range(size))})
    return float(sum(np.size(w) for w in replacement[1]))


def _terms(info, vary_in: list, vary_out: bool, units: tuple = ()) -> tuple:
    """``(a, b, c, d)`` with ``a·i·o + b·i + c·o + d`` the layer's parameters at ``i``
    input and ``o`` output channels (with one unit fewer of each axis in ``units``)."""
    i0, o0 = last_axis(info.input_shapes[0]), last_axis(info.output_shape)

    def count(drop_in, drop_out):
        return _count(info, vary_in if drop_in else [], drop_out, units)
    f00 = count(False, False)
    fi = count(True, False) if vary_in else f00
    fo = count(False, True) if vary_out else f00
    fio = count(True, True) if vary_in and vary_out else fi + fo - f00
    a = fio - fi - fo + f00
    b = f00 - fi - a * o0
    c = f00 - fo - a * i0
    return a, b, c, f00 - a * i0 * o0 - b * i0 - c * o0


class ParamsEstimator(WidthModel):
    """Exact ``count_params()`` of a model pruned to given group widths.

    Example::

        est = ParamsEstimator(graph, ranking.width_groups(), ranking.unit_groups())
        est.cost_of(p.removed) == surgery.apply(model, p).count_params()
    """

    unit = "parameters"

    def __init__(self, graph: ModelGraph, groups: Sequence[tuple],
                 units: Sequence[tuple] = ()):
        super().__init__(graph, groups, units)
        rows_in, rows_out, coefs, unit_rows = [], [], [], []
        self._empty: list = []  # (unit group, parameters beyond the linear terms at 0)
        for info, rule, in_rows, out_row, unit_axes in self.layers:
            if not info.weights:
                continue
            varies = [k for k, r in enumerate(in_rows) if np.array_equal(r, in_rows[0])
                      and np.any(r[:-1])] if rule is not None else []
            vary_out = rule is not None and rule.flow_of(info) == PRODUCER and \
                bool(np.any(out_row[:-1]))
            whole = np.asarray(_terms(info, varies, vary_out) if rule is not None else
                               (0.0, 0.0, 0.0, float(sum(np.size(w) for w in info.weights))))
            rows_in.append(in_rows[0] if in_rows else np.eye(len(out_row))[-1])
            rows_out.append(out_row)
            coefs.append(whole)
            fewer = {axis: np.asarray(_terms(info, varies, vary_out, (axis,)))
                     for _, axis in unit_axes}
            emptiable = set(rule.emptiable_axes(info)) if rule is not None else set()
            for g, axis in unit_axes:
                unit_rows.append((len(coefs) - 1, g, tuple(whole - fewer[axis])))
                if axis in emptiable:  # what the linear terms miss at no unit at all
                    size, full = int(self.sizes[g]), _count(info, [], False, ())
                    linear = full - size * (full - _count(info, [], False, (axis,)))
                    self._empty.append((g, _emptied(info, axis, size) - linear))
            group = {axis: g for g, axis in unit_axes}
            for a, b in rule.interacting_axes(info) if rule is not None else ():
                if a in group and b in group:  # a head's width times the head count
                    both = np.asarray(_terms(info, varies, vary_out, (a, b)))
                    self.pair_terms.append((len(coefs) - 1, group[a], group[b],
                                            tuple(whole - fewer[a] - fewer[b] + both)))
        n = len(self.sizes) + 1
        self._rows_in = np.array(rows_in).reshape(-1, n)
        self._rows_out = np.array(rows_out).reshape(-1, n)
        self._abcd = np.array(coefs).reshape(-1, 4)
        self._unit_layer = np.array([k for k, _, _ in unit_rows], int)
        self._unit_group = np.array([g for _, g, _ in unit_rows], int)
        self._unit_abcd = np.array([t for _, _, t in unit_rows]).reshape(-1, 4)
        self.total = self.params(self.sizes)

    def params(self, kept):
        """Parameters with group ``g`` keeping ``kept[g]`` units; ``kept`` may be a matrix
        of rows (one count per row)."""
        kept = np.asarray(kept, np.float64)
        full = np.concatenate([kept, np.ones(kept.shape[:-1] + (1,))], axis=-1)
        i, o = full @ self._rows_in.T, full @ self._rows_out.T
        a, b, c, d = self._abcd.T
        total = (a * i * o + b * i + c * o + d).sum(axis=-1)
        if len(self._unit_layer):
            i, o = i[..., self._unit_layer], o[..., self._unit_layer]
            a, b, c, d = self._unit_abcd.T
            gone = kept[..., self._unit_group] - self.sizes[self._unit_group]
            total = total + (gone * (a * i * o + b * i + c * o + d)).sum(axis=-1)
        for g, extra in self._empty:
            total = total + extra * (kept[..., g] == 0)
        return total + self.pairs(kept, full @ self._rows_in.T, full @ self._rows_out.T)

    cost = params
