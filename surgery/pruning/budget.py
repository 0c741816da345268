"""Budgets: a prune plan that removes a given fraction of a model's cost (FLOPs or latency).

This module owns the one allocation search every budget shares, :func:`plan_for_budget`,
and its FLOPs form :func:`plan_for_flops`, which ``surgery.plan(model, flops_target=F)``
calls (``latency_target`` calls it through :mod:`surgery.cost.budget` with a latency cost).
It never runs surgery while searching: costs are functions of the groups' kept widths
(:mod:`surgery.pruning.width_model`: exact FLOPs; :mod:`surgery.cost.table`: measured
latency). Asked for ``candidates``, it runs the search several times with the budget
shared differently between groups and keeps the cut that agrees best with the original
after adaptive BN (:mod:`surgery.pruning.selection`).

The search bisects one uniform plan ratio (with the caller's criterion, policy, scope and
rounding) to bracket the target, then fills the gap greedily (a knapsack filled by
value density, as HALP does): between the two bracketing plans, it takes one rounding unit
of channels at a time from the group whose next channels have the least importance per
unit of cost saved, and stops at the step nearest to the
target. Where channels are too coarse to land within ``tolerance`` (LeNet-5), it returns
the nearest plan and logs a warning saying what it reached.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np

from surgery._backend import keras
from surgery.pruning.width_model import (  # noqa: F401  (importable from here as before)
    FlopsEstimator, WidthModel, call_widths,
)

logger = logging.getLogger(__name__)

#: Plans closer than this to the FLOPs target are accepted without a warning.
DEFAULT_TOLERANCE = 0.02
#: The largest uniform ratio the bracketing search tries.
DEFAULT_MAX_RATIO = 0.95


def _cached(criterion):
    """``criterion`` scoring each layer once, however many plans ask (data passes are slow)."""
    from surgery.pruning.criteria import get_criterion

    fn = get_criterion(criterion)
    cache: dict[str, np.ndarray] = {}

    def cached(model, layer_names, data=None, **options):
        missing = [n for n in layer_names if n not in cache]
        if missing:
            cache.update(fn(model, missing, data, **options))
        return {n: cache[n] for n in layer_names}

    cached.__name__ = criterion if isinstance(criterion, str) else \
        getattr(criterion, "__name__", "criterion")
    cached.needs_data = getattr(fn, "needs_data", False)
    return cached


def plan_for_flops(model: keras.Model, flops_target: float, *, plan_fn: Optional[Callable] = None,
                   tolerance: float = DEFAULT_TOLERANCE, max_ratio: float = DEFAULT_MAX_RATIO,
                   iterations: int = 14, at_least: bool = False, **plan_kwargs):
    """A plan whose surgery removes ``flops_target`` of ``count_flops(model)``, within
    ``tolerance`` where the model's channels allow it (else the nearest plan, and a
    warning). ``plan_kwargs`` go to ``plan_fn`` (default :func:`surgery.plan`):
    criterion, policy, scope, round_to, min_channels, ignore, per_layer (those groups keep
    their ratio), data. ``settings`` of the result records ``flops_target``,
    ``flops_removed`` (the fraction reached), ``flops_reachable`` (whether ``max_ratio``
    removes at least the target), ``flops_before``, ``flops_after`` and
    ``ratio`` (of the two uniform ratios bracketing the target, the one whose plan comes
    nearer; the returned plan may differ from it, filled group by group). With
    ``at_least``, the plan nearest the target among those removing at least it and at
    most ``tolerance`` more (a promise such as "half the FLOPs" is then not missed by a
    rounding step); where no such plan exists, still the nearest plan, with the warning.

    Example::

        p = plan_for_flops(model, 0.5, criterion="l1", round_to=8)
        p.settings["flops_removed"]  # 0.49.. to 0.51..
    """
    from surgery.engine.flops import count_flops
    from surgery.errors import SurgeryError

    def estimator(flat, plan0):
        est = FlopsEstimator(flat, plan0)
        reference = count_flops(flat)
        if int(round(est.total)) != reference:  # pragma: no cover  (a misread graph)
            raise SurgeryError(f"flops_target: cannot predict the FLOPs of model "
                               f"'{flat.name}' ({int(est.total)} vs {reference}); plan with "
                               "ratio= instead")
        return est

    best = plan_for_budget(model, flops_target, estimator, name="flops_target", prefix="flops",
                           plan_fn=plan_fn, tolerance=tolerance, max_ratio=max_ratio,
                           iterations=iterations, at_least=at_least, **plan_kwargs)
    best.settings["flops_before"] = int(round(best.settings["flops_before"]))
    best.settings["flops_after"] = int(round(best.settings["flops_after"]))
    return best


def plan_for_budget(model: keras.Model, target: float, estimator: Callable, *,
                    name: str = "flops_target", prefix: str = "flops",
                    plan_fn: Optional[Callable] = None, tolerance: float = DEFAULT_TOLERANCE,
                    max_ratio: float = DEFAULT_MAX_RATIO, iterations: int = 14,
                    at_least: bool = False, greedy: bool = False, quiet: bool = False,
                    candidates: int = 1, seed: int = 0, **plan_kwargs):
    """A plan removing ``target`` of the cost that ``estimator(flat_model, unpruned_plan)``
    (a :class:`WidthModel`) gives, by the search in this module's docstring. ``name`` is the
    argument the caller set (for messages); ``settings`` records ``<prefix>_target``,
    ``<prefix>_removed``, ``<prefix>_reachable``, ``<prefix>_before``, ``<prefix>_after``
    and ``ratio`` (see :func:`plan_for_flops`, its FLOPs form). With ``greedy``, the
    uniform-ratio bracketing is skipped: the fill runs from the unpruned plan toward
    ``max_ratio`` in every group, so channels go wherever they buy the least importance
    per unit of cost (a knapsack over all groups, as HALP does). ``quiet`` logs a missed
    target at debug level (a caller that corrects the target itself warns). With
    ``candidates`` N > 1, the search runs N times with the budget shared differently
    between groups (:class:`surgery.pruning.selection.Variant`, drawn from ``seed``), and
    the plan that agrees best with ``model`` on ``data`` after adaptive BN wins
    (:func:`surgery.pruning.selection.choose_candidate`).

    Example::

        p = plan_for_budget(model, 0.5, FlopsEstimator, criterion="l1")
    """
    from surgery.engine.flatten import flattened
    from surgery.errors import SurgeryError
    from surgery.pruning.arguments import check_fraction, check_model
    from surgery.pruning.selection import Variant, choose_candidate

    if plan_fn is None:
        from surgery.pruning.planning import plan as plan_fn
    check_model(model, "plan")
    check_fraction(name, target, low_open=True,
                   hint=f"e.g. {name}=0.5 removes half of the model's {prefix}")
    if plan_kwargs.get("threshold") is not None:
        raise SurgeryError(f"{name} and threshold both choose how much to prune: pass "
                           f"one of them (threshold=None with {name})")
    plan_kwargs.pop("threshold", None)
    plan_kwargs.pop("ratio", None)
    criterion = plan_kwargs.pop("criterion", "l1")
    fixed = dict(plan_kwargs.pop("per_layer", None) or {})
    scope = plan_kwargs.pop("scope", "local")
    plan_kwargs["criterion"] = _cached(criterion)
    model = flattened(model)
    if candidates > 1 and plan_kwargs.get("data") is None:
        raise SurgeryError(f"candidates={candidates} chooses between plans by their "
                           "accuracy after adaptive BN, which needs data=: pass training "
                           "examples (an (x, y) tuple of arrays or a tf.data.Dataset), or "
                           "candidates=1")
    lo_plan = plan_fn(model, ratio=0.0, per_layer=fixed, scope=scope, **plan_kwargs)
    est = estimator(model, lo_plan)
    search = dict(model=model, target=target, est=est, name=name, prefix=prefix,
                  plan_fn=plan_fn, tolerance=tolerance, max_ratio=max_ratio,
                  iterations=iterations, at_least=at_least, greedy=greedy,
                  criterion=criterion, fixed=fixed, scope=scope, plan_kwargs=plan_kwargs)
    if candidates <= 1:
        return _search(Variant(0), quiet=quiet, **search)
    plans = [_search(Variant(k, seed), quiet=quiet or k > 0, **search)
             for k in range(candidates)]
    return choose_candidate(model, plans, plan_kwargs["data"])


def _search(variant, *, model, target, est, name, prefix, plan_fn, tolerance, max_ratio,
            iterations, at_least, greedy, criterion, fixed, scope, plan_kwargs, quiet):
    """One run of the search of this module's docstring, perturbed by ``variant``."""
    from surgery.engine.groups import channel_groups

    plan_kwargs = {**plan_kwargs, "criterion": variant.criterion(plan_kwargs["criterion"])}

    def make(ratio, per_layer=None, local=False):
        if per_layer is None and scope == "local":
            per_layer = variant.ratios(ratio, est.groups, max_ratio)
        p = plan_fn(model, ratio=ratio, per_layer={**(per_layer or {}), **fixed},
                    scope="local" if local else scope, **plan_kwargs)
        return p

    lo_plan = make(0.0)
    all_groups = channel_groups(model)
    reference = float(est.total)

    def removed(p) -> float:
        return 1.0 - est.cost_of_plan(p) / reference

    # 1. bracket the target with one uniform ratio
    lo, hi = 0.0, max_ratio
    hi_plan = cap_plan = make(hi)
    lo_cut, hi_cut = 0.0, removed(hi_plan)
    if hi_cut >= target and not greedy:
        for _ in range(iterations):
            mid = (lo + hi) / 2
            p = make(mid)
            cut = removed(p)
            logger.debug("ratio %.4f removes %.2f%% of %s", mid, 100 * cut, est.unit)
            if cut >= target:
                hi, hi_plan, hi_cut = mid, p, cut
            else:
                lo, lo_plan, lo_cut = mid, p, cut
            if hi_cut - lo_cut < tolerance / 4:
                break
    elif not greedy:
        lo, lo_plan, lo_cut = hi, hi_plan, hi_cut

    def enough(cut: float) -> bool:  # at or above the target, by at most the tolerance
        return target <= cut <= target + tolerance

    brackets = [(lo_plan, lo_cut), (hi_plan, hi_cut)]
    if at_least and any(enough(c) for _, c in brackets):
        brackets = [pc for pc in brackets if enough(pc[1])]
    best, best_cut = min(brackets, key=lambda pc: abs(pc[1] - target))

    # 2. fill the gap greedily, by importance per unit of cost saved
    short = at_least and best_cut < target
    if (abs(best_cut - target) > tolerance / 10 or short) and hi_cut >= target:
        blocks = {g.name: g.blocks for g in all_groups if g.producers}
        filled = _fill(model, est, lo_plan, cap_plan, target, reference, fixed,
                       plan_kwargs, make, blocks, tolerance if at_least else None)
        nearer = filled is not None and \
            abs(removed(filled) - target) < abs(best_cut - target)
        if filled is not None and at_least and enough(removed(filled)) != enough(best_cut):
            nearer = enough(removed(filled))  # reaching the target beats being nearer
        if nearer:
            best, best_cut = filled, removed(filled)
    uniform = lo if abs(lo_cut - target) <= abs(hi_cut - target) else hi
    best.settings.update({
        "ratio": uniform,
        "criterion": criterion if isinstance(criterion, str) else
        getattr(criterion, "__name__", str(criterion)),
        "scope": scope, f"{prefix}_target": float(target),
        f"{prefix}_removed": round(best_cut, 6),
        f"{prefix}_reachable": bool(hi_cut >= target),
        f"{prefix}_before": reference, f"{prefix}_after": est.cost_of_plan(best)})
    if abs(best_cut - target) > tolerance:
        logger.log(
            logging.DEBUG if quiet else logging.WARNING,
            "%s=%.3f: the nearest plan removes %.1f%% of %s (%.4g of %.4g), more than %.0f "
            "points away; model '%s' has too few channels (or round_to/min_channels/ignore "
            "leave too few) to land closer", name, target, 100 * best_cut, est.unit,
            reference - est.cost_of_plan(best), reference, 100 * tolerance, model.name)
    return best


def _fill(model, est: WidthModel, lo_plan, hi_plan, target, reference, fixed,
          plan_kwargs, make, blocks_of, at_least: Optional[float] = None):
    """From ``lo_plan`` (below the target) toward ``hi_plan`` (at or above it), one
    rounding unit of one group at a time; returns the plan nearest the target (with
    ``at_least`` a tolerance: nearest among those reaching the target by at most it)."""
    from surgery.pruning.criteria import channel_scores
    from surgery.pruning.planning import _keep_count
    from surgery.pruning.policies import normalised

    round_to = plan_kwargs.get("round_to", 1) or 1
    min_channels = plan_kwargs.get("min_channels", 1)
    lo_k, hi_k = est.kept(lo_plan), est.kept(hi_plan)
    movable = [g for g in range(len(est.groups)) if hi_k[g] < lo_k[g]
               and not set(est.groups[g]) & set(fixed)]
    if not movable:
        return None
    names = [p for g in movable for p in est.groups[g]]
    scores = channel_scores(model, names, plan_kwargs["criterion"], plan_kwargs.get("data"))
    ranked, steps = {}, {}
    for g in movable:
        members = est.groups[g]
        size = int(est.sizes[g])
        whole = [p for p in members if np.size(scores[p]) == size] or members[:0]
        combined = sum(normalised(scores[p]) for p in whole) / len(whole) if whole else \
            np.arange(size, dtype=np.float64)
        ranked[g] = np.sort(combined)
        blocks = blocks_of.get(members[0], 1)
        widths = {_keep_count(size, d / size, round_to, min_channels, blocks)
                  for d in range(size + 1)}
        steps[g] = sorted((w for w in widths if hi_k[g] <= w < lo_k[g]), reverse=True)
    kept = lo_k.astype(np.float64).copy()
    goal = (1.0 - target) * reference
    current = float(est.cost(kept))
    history = [(abs(current - goal), kept.copy(), current <= goal)]
    while current > goal:
        options = [g for g in movable if steps[g]]
        if not options:
            break
        trial = np.repeat(kept[None, :], len(options), axis=0)
        for row, g in enumerate(options):
            trial[row, g] = steps[g][0]
        saved = current - est.cost(trial)
        cost = []
        for row, g in enumerate(options):
            size = int(est.sizes[g])
            gone = ranked[g][size - int(kept[g]):size - int(steps[g][0])].sum()
            cost.append(gone / max(saved[row], 1e-9))
        row = int(np.argmin(cost))
        g = options[row]
        if current - saved[row] < goal and np.any(current - saved >= goal):
            # a coarse step (a wide conv's channel) would overshoot while finer ones
            # remain: keep it as a candidate, freeze its group, and fill on with the rest
            crossed = kept.copy()
            crossed[g] = steps[g][0]
            history.append((abs(current - saved[row] - goal), crossed, True))
            steps[g] = []
            continue
        kept[g] = steps[g].pop(0)
        current = float(current - saved[row])
        history.append((abs(current - goal), kept.copy(), current <= goal))
    reached = [h for h in history if h[2] and h[0] <= at_least * reference] \
        if at_least is not None else []
    kept = min(reached or history, key=lambda h: h[0])[1]
    per_layer = {}
    for g, members in enumerate(est.groups):
        if set(members) & set(fixed):
            continue
        size = est.sizes[g]
        per_layer[members[0]] = float((size - kept[g] + 0.5) / size)  # floor() -> exact
    return make(0.0, per_layer, local=True)

