"""Allocation: how a budget is shared between groups, under a cost model.

This module owns the one search every budget shares, :func:`allocate`: a plan removing a
fraction of the cost that a cost model (:mod:`surgery.cost.width`: exact FLOPs;
:mod:`surgery.cost.table`: measured latency) gives as a function of the groups' kept
widths. It never runs surgery while searching. :func:`plan_for_flops` is its FLOPs form,
which ``surgery.plan(model, flops_target=F)`` uses; a :class:`Variant` perturbs how the
budget is shared (the candidates of :mod:`surgery.calibration.candidates`).

The search bisects one uniform plan ratio (with the spec's criterion, policy, scope and
rounding) to bracket the target, then fills the gap greedily (a knapsack filled by
value density, as HALP does): between the two bracketing plans, it takes one rounding unit
of channels at a time from the group whose next channels have the least importance per
unit of cost saved, and stops at the step nearest to the target. Where channels are too
coarse to land within ``tolerance`` (LeNet-5), it returns the nearest plan and logs a
warning saying what it reached.
"""
from __future__ import annotations

import dataclasses
import logging
import zlib
from typing import Optional, Sequence

import numpy as np

from surgery.cost.params import ParamsEstimator
from surgery.cost.width import FlopsEstimator, WidthModel
from surgery.engine.flops import flops_by_layer
from surgery.engine.graph import ModelGraph
from surgery.errors import SurgeryError
from surgery.pruning.plan import PrunePlan
from surgery.pruning.planning import PlanSpec, Ranking, keep_count

logger = logging.getLogger(__name__)

#: Plans closer than this to a FLOPs target are accepted without a warning.
DEFAULT_TOLERANCE = 0.02
#: The largest uniform ratio the bracketing search tries.
DEFAULT_MAX_RATIO = 0.95
#: Spread (standard deviation of the log) of a candidate's per-layer perturbation factors.
DEFAULT_SPREAD = 0.7


@dataclasses.dataclass(frozen=True)
class Budget:
    """A fraction ``target`` of a cost to remove. ``name`` is the argument the user set
    (for messages) and ``prefix`` names the plan's settings (``<prefix>_removed``, ...);
    plans within ``tolerance`` are accepted; the bracketing search goes up to
    ``max_ratio`` in ``iterations`` halvings; with ``at_least``, the plan nearest the
    target among those removing at least it (and at most ``tolerance`` more); with
    ``greedy``, no bracketing: the fill runs from the unpruned plan over all groups;
    with ``by_importance``, the fill ranks steps by the normalised importance they give up
    alone, not per unit of cost (units of very different sizes, a head and an MLP unit,
    would otherwise be priced by their size);
    ``quiet`` logs a missed target at debug level (a caller that corrects it warns)."""

    target: float
    name: str = "flops_target"
    prefix: str = "flops"
    tolerance: float = DEFAULT_TOLERANCE
    max_ratio: float = DEFAULT_MAX_RATIO
    iterations: int = 14
    at_least: bool = False
    greedy: bool = False
    by_importance: bool = False
    quiet: bool = False


class Variant:
    """The ``index``-th candidate's perturbation of a budget search (index 0: none).

    Every producer layer gets a factor ``exp(N(0, spread))``, fixed by ``(seed, index,
    layer name)``. Every score of that layer is raised to that power (shifted to be
    non-negative first), which moves a global ranking's cut-off between layers but keeps
    each layer's order; with ``scope="local"`` the uniform ratio ``r`` also becomes
    ``max_ratio * (r / max_ratio) ** factor`` per group, so every candidate spans the same
    range of cuts. Every kind of unit (channels, heads, MLP units, blocks, ...) gets a
    factor the same way, which multiplies its groups' normalised scores: candidates then
    also differ in how much of the budget each kind gives (Minitron's candidate
    architectures, which trade heads against MLP and hidden width). A model with one kind
    of unit (a CNN's channels) is not moved by it.

    >>> v = Variant(1, seed=0)
    >>> v.factor("conv") == Variant(1, seed=0).factor("conv") != Variant(2).factor("conv")
    True
    >>> Variant(0).factor("conv")
    1.0
    """

    def __init__(self, index: int, seed: int = 0, spread: float = DEFAULT_SPREAD):
        self.index, self.seed, self.spread = int(index), int(seed), float(spread)

    def factor(self, name: str) -> float:
        if self.index == 0:
            return 1.0
        rng = np.random.default_rng([self.seed, self.index, zlib.crc32(name.encode())])
        return float(np.exp(rng.normal(0.0, self.spread)))

    def kind_factor(self, kind: str) -> float:
        """The factor of unit kind ``kind``'s normalised scores."""
        return self.factor(f"kind:{kind}")

    def scores(self, name: str, s: np.ndarray) -> np.ndarray:
        """Layer ``name``'s scores raised to its factor."""
        s = np.asarray(s, np.float64)
        return (s - min(0.0, float(s.min(initial=0.0)))) ** self.factor(name)

    def ranking(self, ranking: Ranking) -> Ranking:
        """``ranking`` with every layer's scores perturbed (itself for index 0)."""
        return ranking if self.index == 0 else ranking.with_transform(self.scores,
                                                                      self.kind_factor)

    def ratios(self, ratio: float, groups: Sequence[Sequence[str]], max_ratio: float) -> dict:
        """Per-group ratios (keyed by each group's first producer) for a uniform ``ratio``."""
        if self.index == 0 or ratio <= 0:
            return {}
        return {g[0]: float(max_ratio * min(1.0, ratio / max_ratio) ** self.factor(g[0]))
                for g in groups if g}


class _Search:
    """One run of the search of this module's docstring: plans of a ranking, costed."""

    def __init__(self, ranking: Ranking, spec: PlanSpec, cost: WidthModel, budget: Budget,
                 variant: Variant):
        self.ranking, self.spec, self.cost, self.budget = variant.ranking(ranking), spec, \
            cost, budget
        self.variant = variant
        self.fixed = dict(spec.per_layer)
        self.reference = float(cost.total)

    def make(self, ratio: float, per_layer: Optional[dict] = None,
             local: bool = False) -> PrunePlan:
        if per_layer is None and self.spec.scope == "local":
            per_layer = self.variant.ratios(ratio, self.cost.groups, self.budget.max_ratio)
        return self.ranking.plan(self.spec.replace(
            ratio=ratio, per_layer={**(per_layer or {}), **self.fixed},
            scope="local" if local else self.spec.scope))

    def removed(self, p: PrunePlan) -> float:
        return 1.0 - self.cost.cost_of(p.removed) / self.reference

    def bracket(self):
        """The uniform ratios (and plans, cuts) just below and above the target."""
        b = self.budget
        lo, hi = 0.0, b.max_ratio
        lo_plan, hi_plan = self.make(0.0), self.make(hi)
        cap_plan = hi_plan
        lo_cut, hi_cut = 0.0, self.removed(hi_plan)
        if hi_cut >= b.target and not b.greedy:
            for _ in range(b.iterations):
                mid = (lo + hi) / 2
                p = self.make(mid)
                cut = self.removed(p)
                logger.debug("ratio %.4f removes %.2f%% of %s", mid, 100 * cut, self.cost.unit)
                if cut >= b.target:
                    hi, hi_plan, hi_cut = mid, p, cut
                else:
                    lo, lo_plan, lo_cut = mid, p, cut
                if hi_cut - lo_cut < b.tolerance / 4:
                    break
        elif not b.greedy:
            lo, lo_plan, lo_cut = hi, hi_plan, hi_cut
        return (lo, lo_plan, lo_cut), (hi, hi_plan, hi_cut), cap_plan

    def enough(self, cut: float) -> bool:
        """At or above the target, by at most the tolerance."""
        return self.budget.target <= cut <= self.budget.target + self.budget.tolerance

    def run(self) -> PrunePlan:
        b = self.budget
        (lo, lo_plan, lo_cut), (hi, hi_plan, hi_cut), cap_plan = self.bracket()
        brackets = [(lo_plan, lo_cut), (hi_plan, hi_cut)]
        if b.at_least and any(self.enough(c) for _, c in brackets):
            brackets = [pc for pc in brackets if self.enough(pc[1])]
        best, best_cut = min(brackets, key=lambda pc: abs(pc[1] - b.target))
        short = b.at_least and best_cut < b.target
        if (abs(best_cut - b.target) > b.tolerance / 10 or short) and hi_cut >= b.target:
            filled = self.fill(lo_plan, cap_plan)
            if filled is not None and self.better(self.removed(filled), best_cut):
                best, best_cut = filled, self.removed(filled)
        uniform = lo if abs(lo_cut - b.target) <= abs(hi_cut - b.target) else hi
        self.record(best, best_cut, uniform, hi_cut >= b.target)
        return best

    def better(self, cut: float, best_cut: float) -> bool:
        """Whether a filled plan's ``cut`` beats the bracketing plan's."""
        if self.budget.at_least and self.enough(cut) != self.enough(best_cut):
            return self.enough(cut)  # reaching the target beats being nearer
        return abs(cut - self.budget.target) < abs(best_cut - self.budget.target)

    def record(self, best: PrunePlan, best_cut: float, uniform: float, reachable: bool):
        b, prefix = self.budget, self.budget.prefix
        best.settings.update({
            "ratio": uniform, "criterion": self.spec.criterion_name, "scope": self.spec.scope,
            f"{prefix}_target": float(b.target), f"{prefix}_removed": round(best_cut, 6),
            f"{prefix}_reachable": bool(reachable), f"{prefix}_before": self.reference,
            f"{prefix}_after": self.cost.cost_of(best.removed)})
        if abs(best_cut - b.target) > b.tolerance:
            logger.log(
                logging.DEBUG if b.quiet else logging.WARNING,
                "%s=%.3f: the nearest plan removes %.1f%% of %s (%.4g of %.4g), more than "
                "%.0f points away; model '%s' has too few channels (or round_to/min_channels"
                "/ignore leave too few) to land closer", b.name, b.target, 100 * best_cut,
                self.cost.unit, self.reference - self.cost.cost_of(best.removed),
                self.reference, 100 * b.tolerance, self.ranking.graph.model.name)

    def fill(self, lo_plan: PrunePlan, hi_plan: PrunePlan) -> Optional[PrunePlan]:
        """From ``lo_plan`` (below the target) toward ``hi_plan`` (at or above it), one
        rounding unit of one group at a time; the plan nearest the target (with
        ``at_least``: nearest among those reaching it by at most the tolerance)."""
        cost = self.cost
        lo_k, hi_k = cost.kept(lo_plan.removed), cost.kept(hi_plan.removed)
        movable = [g for g in range(len(cost.groups)) if hi_k[g] < lo_k[g]
                   and not set(cost.groups[g]) & set(self.fixed)]
        if not movable:
            return None
        history = _Fill(self, movable, lo_k, hi_k).run()
        tolerance = self.budget.tolerance if self.budget.at_least else None
        reached = [h for h in history if h[2] and h[0] <= tolerance * self.reference] \
            if tolerance is not None else []
        kept = min(reached or history, key=lambda h: h[0])[1]
        per_layer = {}
        for g, members in enumerate(cost.groups):
            if not set(members) & set(self.fixed):
                size = cost.sizes[g]
                # a unit group shares its layer with the layer's other axes: its own label
                key = cost.labels[g] if self.ranking.groups[g].axis is not None else members[0]
                per_layer[key] = float((size - kept[g] + 0.5) / size)  # floor: exact
        return self.make(0.0, per_layer, local=True)


class _Fill:
    """The greedy fill of :meth:`_Search.fill`: ``history`` of ``(distance to the goal,
    kept widths, reached)``, one entry per step taken."""

    def __init__(self, search: _Search, movable: list, lo_k, hi_k):
        self.search, self.cost, self.movable = search, search.cost, movable
        spec = search.spec
        self.ranked, self.steps = {}, {}
        for g in movable:
            size = int(self.cost.sizes[g])
            self.ranked[g] = np.sort(search.ranking.combined(g))
            blocks = search.ranking.groups[g].blocks
            axis = search.ranking.groups[g].axis
            widths = {keep_count(size, d / size, spec.multiple(axis), spec.minimum(axis), blocks)
                      for d in range(size + 1)}
            self.steps[g] = sorted((w for w in widths if hi_k[g] <= w < lo_k[g]), reverse=True)
            if search.ranking.groups[g].emptiable:  # past the largest ratio, to none at all
                self.steps[g].append(0)
        self.kept = lo_k.astype(np.float64).copy()
        self.goal = (1.0 - search.budget.target) * search.reference
        # a removed block takes its heads and widths along: they count as whole, and stay
        self.members = {g: search.ranking.block_members(g) for g in movable}
        self.weights = {g: search.ranking.unit_weight(g) if search.ranking.groups[g].axis
                        else 1.0 for g in movable}

    def _step(self, kept: np.ndarray, g: int) -> np.ndarray:
        """``kept`` after group ``g``'s next step (a block's own unit groups made whole)."""
        new = kept.copy()
        new[g] = self.steps[g][0]
        size = int(self.cost.sizes[g])
        for block in self.members[g][size - int(kept[g]):size - int(new[g])]:
            for m in block:
                new[m] = self.cost.sizes[m]
        return new

    def _take(self, kept: np.ndarray, g: int) -> None:
        """Take group ``g``'s next step in ``kept``; a removed block's groups stop moving."""
        kept[:] = self._step(kept, g)
        self.steps[g].pop(0)
        size = int(self.cost.sizes[g])
        for block in self.members[g][:size - int(kept[g])]:
            for m in block:
                self.steps[m] = []

    def run(self) -> list:
        kept, goal, steps = self.kept, self.goal, self.steps
        current = float(self.cost.cost(kept))
        history = [(abs(current - goal), kept.copy(), current <= goal)]
        while current > goal:
            options = [g for g in self.movable if steps[g]]
            if not options:
                break
            trial = np.array([self._step(kept, g) for g in options])
            saved = current - self.cost.cost(trial)
            row = int(np.argmin([self._price(g, saved[r]) for r, g in enumerate(options)]))
            g = options[row]
            if current - saved[row] < goal and np.any(current - saved >= goal):
                # a coarse step (a wide conv's channel) would overshoot while finer ones
                # remain: keep it as a candidate, freeze its group, and fill on with the rest
                history.append((abs(current - saved[row] - goal), trial[row], True))
                steps[g] = []
                continue
            self._take(kept, g)
            current = float(current - saved[row])
            history.append((abs(current - goal), kept.copy(), current <= goal))
        return history

    def _price(self, g: int, saved: float) -> float:
        """The importance group ``g``'s next step gives up per unit of cost it saves, each
        unit's normalised importance times its size (:meth:`Ranking.unit_weight`); with
        ``by_importance``: the mean importance of the units it removes."""
        size = int(self.cost.sizes[g])
        gone = self.ranked[g][size - int(self.kept[g]):size - int(self.steps[g][0])]
        if self.search.budget.by_importance:
            return float(gone.mean())
        # per unit of cost, a unit's importance counts its size (a head against an MLP unit)
        return gone.sum() * self.weights[g] / max(saved, 1e-9)


def allocate(ranking: Ranking, spec: PlanSpec, cost: WidthModel, budget: Budget,
             variant: Optional[Variant] = None) -> PrunePlan:
    """A plan of ``ranking`` removing ``budget.target`` of ``cost`` (a
    :class:`~surgery.cost.width.WidthModel` over ``ranking.width_groups()``), by the
    search of this module's docstring, perturbed by ``variant``. ``settings`` records
    ``<prefix>_target``, ``<prefix>_removed``, ``<prefix>_reachable``,
    ``<prefix>_before``, ``<prefix>_after`` and ``ratio`` (of the two uniform ratios
    bracketing the target, the one whose plan comes nearer; the returned plan may differ
    from it, filled group by group).

    Example::

        ranking = Ranking(graph, spec)
        cost = FlopsEstimator(graph, ranking.width_groups())
        p = allocate(ranking, spec, cost, Budget(0.5))
    """
    return _Search(ranking, spec, cost, budget, variant or Variant(0)).run()


def flops_cost(graph: ModelGraph, ranking: Ranking) -> FlopsEstimator:
    """The exact FLOPs of ``graph``'s model as a function of ``ranking``'s group widths,
    checked against :func:`surgery.count_flops`."""
    est = FlopsEstimator(graph, ranking.width_groups(), ranking.unit_groups())
    reference = sum(flops_by_layer(graph).values())
    if int(round(est.total)) != reference:  # pragma: no cover  (a misread graph)
        raise SurgeryError(f"flops_target: cannot predict the FLOPs of model "
                           f"'{graph.model.name}' ({int(est.total)} vs {reference}); plan "
                           "with ratio= instead")
    return est


def params_cost(graph: ModelGraph, ranking: Ranking) -> ParamsEstimator:
    """The exact parameter count of ``graph``'s model as a function of ``ranking``'s
    group widths, checked against ``count_params()``."""
    est = ParamsEstimator(graph, ranking.width_groups(), ranking.unit_groups())
    reference = int(graph.model.count_params())
    if int(round(est.total)) != reference:  # pragma: no cover  (a misread graph)
        raise SurgeryError(f"params_target: cannot predict the parameters of model "
                           f"'{graph.model.name}' ({int(est.total)} vs {reference}); plan "
                           "with flops_target= or ratio= instead")
    return est


def plan_for_params(ranking: Ranking, spec: PlanSpec, budget: Budget,
                    variant: Optional[Variant] = None) -> PrunePlan:
    """:func:`allocate` over the exact parameter count (``settings["params_before"]``
    and ``["params_after"]`` as integers); ``budget`` is named ``params_target``.

    Example::

        p = plan_for_params(Ranking(graph, spec), spec, Budget(0.5, "params_target",
                                                                "params"))
        p.settings["params_removed"]  # 0.49.. to 0.51..
    """
    best = allocate(ranking, spec, params_cost(ranking.graph, ranking), budget, variant)
    best.settings["params_before"] = int(round(best.settings["params_before"]))
    best.settings["params_after"] = int(round(best.settings["params_after"]))
    return best


def plan_for_flops(ranking: Ranking, spec: PlanSpec, budget: Budget,
                   variant: Optional[Variant] = None) -> PrunePlan:
    """:func:`allocate` over the exact FLOPs (``settings["flops_before"]`` and
    ``["flops_after"]`` as integers); ``ranking`` is of ``spec`` on a flat model.

    Example::

        p = plan_for_flops(Ranking(graph, spec), spec, Budget(0.5))
        p.settings["flops_removed"]  # 0.49.. to 0.51..
    """
    best = allocate(ranking, spec, flops_cost(ranking.graph, ranking), budget, variant)
    best.settings["flops_before"] = int(round(best.settings["flops_before"]))
    best.settings["flops_after"] = int(round(best.settings["flops_after"]))
    return best
