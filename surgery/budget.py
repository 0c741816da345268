"""FLOPs budgets: a prune plan that removes a given fraction of a model's FLOPs.

This module owns :func:`plan_for_flops`, which ``surgery.plan(model, flops_target=F)``
calls. It never runs surgery while searching: :class:`FlopsEstimator` walks the model's
graph once and expresses the channel count of every tensor as a linear function of the
kept widths of the plan's channel groups, so the FLOPs that :func:`surgery.count_flops`
would report for the pruned model are a cheap, exact polynomial of those widths.

The search bisects one uniform plan ratio (with the caller's criterion, policy, scope and
rounding) to bracket the target, then fills the gap greedily: between the two bracketing
plans, it takes one rounding unit of channels at a time from the group whose next
channels have the least importance per FLOP saved, and stops at the step nearest to the
target. Where channels are too coarse to land within ``tolerance`` (LeNet-5), it returns
the nearest plan and logs a warning saying what it reached.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Optional

import numpy as np

from surgery._backend import keras, tf

logger = logging.getLogger("surgery.budget")

#: Plans closer than this to the FLOPs target are accepted without a warning.
DEFAULT_TOLERANCE = 0.02
#: The largest uniform ratio the bracketing search tries.
DEFAULT_MAX_RATIO = 0.95


def _keep_count(size: int, ratio: float, round_to: int, min_channels: int, blocks: int) -> int:
    """The kept width ``plan`` gives a group of ``size`` channels at ``ratio`` (its rule)."""
    keep = size - math.floor(size * ratio + 1e-9)
    keep = math.ceil(keep / round_to) * round_to
    keep = max(keep, min_channels, blocks)
    keep = math.ceil(keep / blocks) * blocks
    return min(size, keep)


class FlopsEstimator:
    """Exact :func:`surgery.count_flops` of a model pruned to given group widths.

    ``groups``: the producer lists of the prunable groups (``PrunePlan.groups``),
    ``sizes`` their widths (``PrunePlan.sizes``), ``producers`` every layer that starts
    a channel group (default: read from ``surgery.channel_groups``). Each
    tensor's channel count is ``coef @ [kept widths..., 1]``; each counted node's FLOPs is
    ``A·in·out + B·in + C·out + D`` of its input and output channel counts, with the
    coefficients read off ``surgery.flops`` itself at the unpruned widths.

    Example::

        est = FlopsEstimator(model, p.groups, p.sizes)
        est.flops_of_plan(p) == surgery.count_flops(surgery.apply(model, p))
    """

    def __init__(self, model: keras.Model, groups, sizes, producers=None):
        from surgery.flops import _macs
        from surgery.graph import channel_groups

        if producers is None:
            producers = {p for g in channel_groups(model) for p in g.producers}
        self.producers = set(producers)

        self.groups = [list(g) for g in groups]
        self.index = {p: i for i, g in enumerate(self.groups) for p in g}
        n = len(self.groups) + 1  # last entry: the constant term
        self.sizes = np.array([float(sizes[g[0]]) for g in self.groups])
        vectors: dict[int, np.ndarray] = {}

        def channels(t) -> int:
            return int(t.shape[-1]) if t.shape.rank else 1

        def constant(t) -> np.ndarray:
            v = np.zeros(n)
            v[-1] = channels(t)
            return v

        rows_in, rows_out, coefs = [], [], []
        depth = {nd: d for d, nodes in model._nodes_by_depth.items() for nd in nodes}
        for node in sorted(depth, key=depth.get, reverse=True):
            outs = tf.nest.flatten(node.outputs)
            if node.is_input:
                for t in outs:
                    vectors[id(t)] = constant(t)
                continue
            layer = node.outbound_layer
            ins = list(node.keras_inputs)
            in_vecs = [vectors.get(id(t), constant(t)) for t in ins]
            for t in outs:
                vectors[id(t)] = self._outbound(layer, ins, in_vecs, t, n, channels, constant)
            if not ins:
                continue
            in_shape = tuple(node.input_shapes[0] if isinstance(node.input_shapes, list)
                             else node.input_shapes)
            out_shape = tuple(node.output_shapes[0] if isinstance(node.output_shapes, list)
                              else node.output_shapes)
            if not _macs(layer, in_shape, out_shape):
                continue
            i0, o0 = in_shape[-1], out_shape[-1]

            def m(i, o):
                return float(_macs(layer, in_shape[:-1] + (i,), out_shape[:-1] + (o,)))

            f00, f10, f01, f11 = m(i0, o0), m(2 * i0, o0), m(i0, 2 * o0), m(2 * i0, 2 * o0)
            a = (f11 - f10 - f01 + f00) / (i0 * o0)
            b = (f10 - f00) / i0 - a * o0
            c = (f01 - f00) / o0 - a * i0
            d = f00 - a * i0 * o0 - b * i0 - c * o0
            rows_in.append(vectors.get(id(ins[0]), constant(ins[0])))
            rows_out.append(vectors[id(outs[0])])
            coefs.append((a, b, c, d))
        self._in = np.array(rows_in).reshape(-1, n)
        self._out = np.array(rows_out).reshape(-1, n)
        self._abcd = np.array(coefs).reshape(-1, 4)
        self.total = self.flops(self.sizes)

    def _outbound(self, layer, ins, in_vecs, out, n, channels, constant) -> np.ndarray:
        if layer.name in self.index:
            v = np.zeros(n)
            v[self.index[layer.name]] = 1.0
            return v
        if layer.name in self.producers:  # a producer in a group that keeps its width
            return constant(out)
        if type(layer).__name__ == "Concatenate" and ins and \
                layer.axis % len(ins[0].shape) == len(ins[0].shape) - 1:
            return np.sum(in_vecs, axis=0)
        live = [(t, v) for t, v in zip(ins, in_vecs) if np.any(v[:-1])]
        if not live:
            return constant(out)
        t, v = live[0]
        return v * (channels(out) / channels(t))  # Flatten, depth_multiplier, pass-through

    def flops(self, kept) -> float:
        """FLOPs with group ``g`` keeping ``kept[g]`` channels; ``kept`` may be a matrix of
        rows (one estimate per row)."""
        kept = np.asarray(kept, np.float64)
        full = np.concatenate([kept, np.ones(kept.shape[:-1] + (1,))], axis=-1)
        i, o = full @ self._in.T, full @ self._out.T
        a, b, c, d = self._abcd.T
        return 2 * (a * i * o + b * i + c * o + d).sum(axis=-1)

    def kept(self, plan) -> np.ndarray:
        """The kept width of every group under ``plan``."""
        return np.array([self.sizes[g] - len(plan.deletions.get(members[0], ()))
                         for g, members in enumerate(self.groups)])

    def flops_of_plan(self, plan) -> int:
        return int(round(float(self.flops(self.kept(plan)))))


def _cached(criterion):
    """``criterion`` scoring each layer once, however many plans ask (data passes are slow)."""
    from surgery.criteria import get_criterion

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
                   iterations: int = 14, **plan_kwargs):
    """A plan whose surgery removes ``flops_target`` of ``count_flops(model)``, within
    ``tolerance`` where the model's channels allow it (else the nearest plan, and a
    warning). ``plan_kwargs`` go to ``plan_fn`` (default :func:`surgery.plan`):
    criterion, policy, scope, round_to, min_channels, ignore, per_layer (those groups keep
    their ratio), data. ``settings`` of the result records ``flops_target``,
    ``flops_removed`` (the fraction reached), ``flops_reachable`` (whether ``max_ratio``
    removes at least the target), ``flops_before``, ``flops_after`` and
    ``ratio`` (of the two uniform ratios bracketing the target, the one whose plan comes
    nearer; the returned plan may differ from it, filled group by group).

    Example::

        p = plan_for_flops(model, 0.5, criterion="l1", round_to=8)
        p.settings["flops_removed"]  # 0.49.. to 0.51..
    """
    from surgery.arguments import check_fraction, check_model
    from surgery.errors import SurgeryError
    from surgery.graph import channel_groups
    from surgery.nesting import flattened

    if plan_fn is None:
        from surgery.plan import plan as plan_fn
    check_model(model, "plan")
    check_fraction("flops_target", flops_target, low_open=True,
                   hint="e.g. flops_target=0.5 removes half of the FLOPs")
    if plan_kwargs.get("threshold") is not None:
        raise SurgeryError("flops_target and threshold both choose how much to prune: pass "
                           "one of them (threshold=None with flops_target)")
    plan_kwargs.pop("threshold", None)
    plan_kwargs.pop("ratio", None)
    criterion = plan_kwargs.pop("criterion", "l1")
    fixed = dict(plan_kwargs.pop("per_layer", None) or {})
    scope = plan_kwargs.pop("scope", "local")
    plan_kwargs["criterion"] = _cached(criterion)
    model = flattened(model)

    def make(ratio, per_layer=None, local=False):
        p = plan_fn(model, ratio=ratio, per_layer={**(per_layer or {}), **fixed},
                    scope="local" if local else scope, **plan_kwargs)
        return p

    lo_plan = make(0.0)
    all_groups = channel_groups(model)
    est = FlopsEstimator(model, lo_plan.groups, lo_plan.sizes,
                         {p for g in all_groups for p in g.producers})
    from surgery.flops import count_flops
    reference = count_flops(model)
    if int(round(est.total)) != reference:  # pragma: no cover  (a graph the walk misreads)
        raise SurgeryError(f"flops_target: cannot predict the FLOPs of model '{model.name}' "
                           f"({int(est.total)} vs {reference}); plan with ratio= instead")

    def removed(p) -> float:
        return 1.0 - est.flops_of_plan(p) / reference

    # 1. bracket the target with one uniform ratio
    lo, hi = 0.0, max_ratio
    hi_plan = make(hi)
    lo_cut, hi_cut = 0.0, removed(hi_plan)
    if hi_cut >= flops_target:
        for _ in range(iterations):
            mid = (lo + hi) / 2
            p = make(mid)
            cut = removed(p)
            logger.debug("ratio %.4f removes %.2f%% of FLOPs", mid, 100 * cut)
            if cut >= flops_target:
                hi, hi_plan, hi_cut = mid, p, cut
            else:
                lo, lo_plan, lo_cut = mid, p, cut
            if hi_cut - lo_cut < tolerance / 4:
                break
    else:
        lo, lo_plan, lo_cut = hi, hi_plan, hi_cut
    best, best_cut = min(((lo_plan, lo_cut), (hi_plan, hi_cut)),
                         key=lambda pc: abs(pc[1] - flops_target))

    # 2. fill the gap greedily, by importance per FLOP saved
    if abs(best_cut - flops_target) > tolerance / 10 and hi_cut >= flops_target:
        blocks = {g.name: g.blocks for g in all_groups}
        filled = _fill(model, est, lo_plan, hi_plan, flops_target, reference, fixed,
                       plan_kwargs, make, blocks)
        if filled is not None and abs(removed(filled) - flops_target) < \
                abs(best_cut - flops_target):
            best, best_cut = filled, removed(filled)
    uniform = lo if abs(lo_cut - flops_target) <= abs(hi_cut - flops_target) else hi
    best.settings.update(
        ratio=uniform,
        criterion=criterion if isinstance(criterion, str) else
        getattr(criterion, "__name__", str(criterion)),
        scope=scope, flops_target=float(flops_target), flops_removed=round(best_cut, 6),
        flops_reachable=bool(hi_cut >= flops_target),
        flops_before=int(reference), flops_after=int(est.flops_of_plan(best)))
    if abs(best_cut - flops_target) > tolerance:
        logger.warning(
            "flops_target=%.3f: the nearest plan removes %.1f%% of FLOPs (%d of %d), more "
            "than %.0f points away; model '%s' has too few channels (or round_to/"
            "min_channels/ignore leave too few) to land closer", flops_target,
            100 * best_cut, reference - est.flops_of_plan(best), reference,
            100 * tolerance, model.name)
    return best


def _fill(model, est: FlopsEstimator, lo_plan, hi_plan, target, reference, fixed,
          plan_kwargs, make, blocks_of):
    """From ``lo_plan`` (below the target) toward ``hi_plan`` (at or above it), one
    rounding unit of one group at a time; returns the plan nearest the target."""
    from surgery.criteria import channel_scores
    from surgery.policies import normalised

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
        combined = sum(normalised(scores[p]) for p in members) / len(members)
        ranked[g] = np.sort(combined)
        blocks = blocks_of.get(members[0], 1)
        widths = {_keep_count(size, d / size, round_to, min_channels, blocks)
                  for d in range(size + 1)}
        steps[g] = sorted((w for w in widths if hi_k[g] <= w < lo_k[g]), reverse=True)
    kept = lo_k.astype(np.float64).copy()
    goal = (1.0 - target) * reference
    current = float(est.flops(kept))
    history = [(abs(current - goal), kept.copy())]
    while current > goal:
        options = [g for g in movable if steps[g]]
        if not options:
            break
        trial = np.repeat(kept[None, :], len(options), axis=0)
        for row, g in enumerate(options):
            trial[row, g] = steps[g][0]
        saved = current - est.flops(trial)
        cost = []
        for row, g in enumerate(options):
            size = int(est.sizes[g])
            gone = ranked[g][size - int(kept[g]):size - int(steps[g][0])].sum()
            cost.append(gone / max(saved[row], 1e-9))
        row = int(np.argmin(cost))
        g = options[row]
        kept[g] = steps[g].pop(0)
        current = float(current - saved[row])
        history.append((abs(current - goal), kept.copy()))
    kept = min(history, key=lambda h: h[0])[1]
    per_layer = {}
    for g, members in enumerate(est.groups):
        if set(members) & set(fixed):
            continue
        size = est.sizes[g]
        per_layer[members[0]] = float((size - kept[g] + 0.5) / size)  # floor() -> exact
    return make(0.0, per_layer, local=True)

