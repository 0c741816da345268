"""Planning for the ``prune`` pipeline: which channels go, for a ratio or a FLOPs target.

This module owns the planning stage of :mod:`surgery.cli._run`, for both Keras
generations: a criterion cached per (model, layers) so that the FLOPs-target search scores
each model once, :func:`plan_flops_target` (``surgery.plan(flops_target=...)`` through
:mod:`surgery.pruning.allocation`, relative to the original model's FLOPs in iterative rounds),
one prune step (plan + :func:`surgery.apply`), the data a data-driven criterion needs, and
the ``plan.json`` of several rounds.
"""
from __future__ import annotations

import json

import surgery
from surgery import data as dg
from surgery.cli._kit import UsageError
from surgery.pruning import criteria as _criteria
from surgery.pruning.allocation import DEFAULT_TOLERANCE


def require_cuts(model, p) -> None:
    """:class:`UsageError` when plan ``p`` removes nothing (a run that fine-tuned an
    unchanged model would report a cut it did not make)."""
    if p.empty:
        raise UsageError(f"the plan removes nothing from model '{model.name}': "
                         + _nothing_to_cut(p))


def _cut(model, p):
    """``model`` cut by plan ``p`` (:func:`require_cuts` first)."""
    require_cuts(model, p)
    return surgery.apply(model, p)


def _nothing_to_cut(p) -> str:
    if not p.cuts:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(p.skipped.items())[:2])
        return f"no layer can be pruned ({reasons or 'no prunable layers'})"
    return "every group keeps all its channels at these settings; raise --ratio or the target"


def _cached_criterion(name: str):
    """The criterion ``name``, scoring each (model, layers) pair only once (ratio search)."""
    fn = _criteria.get_criterion(name)
    cache: dict = {}

    def cached(model, layer_names, data=None, **options):
        key = (id(model), tuple(layer_names))
        if key not in cache:
            cache[key] = (model, fn(model, layer_names, data, **options))
        return cache[key][1]

    cached.__name__ = name
    cached.needs_data = getattr(fn, "needs_data", False)
    return cached


def _plan_kwargs(args, criterion, data, scope=None, candidates=1) -> dict:
    kwargs = dict(criterion=criterion, policy=args.policy, round_to=args.round_to,
                  min_channels=args.min_channels, scope=scope or args.scope, data=data)
    for switch in ("depth", "head_dims", "query_groups", "compensate"):  # off unless asked
        if getattr(args, switch, False):
            kwargs[switch] = True
    if candidates > 1:  # EagleEye: compare allocations of the budget after adaptive BN
        kwargs["candidates"] = candidates
    return kwargs


def plan_flops_target(model, removed_target: float, flops_ref: int, *,
                      max_ratio: float = 0.9, apply: bool = True, **plan_kwargs):
    """A plan removing ``removed_target`` of ``flops_ref`` FLOPs (``flops_ref`` may be an
    earlier, larger model's count: iterative rounds), by ``surgery.plan(flops_target=)``;
    returns ``(ratio, plan, pruned_model)`` (the model is ``None`` without ``apply``), where
    ``ratio`` is the uniform plan ratio nearest the target (``--layerwise`` uses it). Raises
    :class:`UsageError` when even ``max_ratio`` falls short of the target by more than 2
    points; a plan that misses only because the channels are coarse is logged as a warning
    by :mod:`surgery.pruning.allocation` and returned.

    Example::

        ratio, p, smaller = plan_flops_target(model, 0.5, surgery.count_flops(model),
                                              criterion="l1", scope="global")
    """
    flops_now = surgery.count_flops(model)
    relative = 1.0 - (1.0 - removed_target) * flops_ref / flops_now
    if relative <= 0:  # already there (an earlier round overshot)
        plan_kwargs.pop("candidates", None)
        p = surgery.plan(model, ratio=0.0, **plan_kwargs)
        return 0.0, p, model if apply else None
    # at least the target: the CLI promises "--flops-target 0.5 removes half the FLOPs"
    p = surgery.plan(model, flops_target=min(relative, 0.999), max_ratio=max_ratio,
                     at_least=True, **plan_kwargs)
    removed = 1.0 - p.settings["flops_after"] / flops_ref
    if removed < removed_target - DEFAULT_TOLERANCE and not p.settings["flops_reachable"]:
        raise UsageError(f"FLOPs target unreachable: removing {removed_target:.0%} of FLOPs "
                         f"needs more than --max-ratio {max_ratio} (the nearest plan removes "
                         f"{removed:.1%})")
    if not apply:
        require_cuts(model, p)
        return p.settings["ratio"], p, None
    return p.settings["ratio"], p, _cut(model, p)


def plan_latency_target(model, args, data):
    """``surgery.plan(latency_target=--latency-target, runtime=--runtime, ...)`` and the
    pruned model; returns ``(plan, pruned_model)``."""
    kwargs = _plan_kwargs(args, _cached_criterion(args.criterion), data,
                          candidates=args.candidates)
    if args.round_to == 1:  # the default: let the latency budget choose the alignment
        kwargs.pop("round_to")
    p = surgery.plan(model, latency_target=args.latency_target, runtime=args.runtime,
                     batch_size=args.latency_batch_size, threads=args.threads, **kwargs)
    return p, _cut(model, p)


def plan_params_target(model, args, data, apply: bool = True):
    """``surgery.plan(params_target=--params-target, ...)`` and the pruned model (``None``
    without ``apply``, after checking that the plan cuts something)."""
    kwargs = _plan_kwargs(args, _cached_criterion(args.criterion), data,
                          candidates=args.candidates if apply else 1)
    p = surgery.plan(model, params_target=args.params_target, max_ratio=args.max_ratio,
                     **kwargs)
    if not apply:
        require_cuts(model, p)
        return p, None
    return p, _cut(model, p)


def latency_report(plans) -> dict:
    """The report's latency keys, from the plan's timing check."""
    s = plans[0].settings
    return dict(latency_target=s["latency_target"], runtime=s["runtime"],
                latency_batch_size=s["batch_size"], latency_threads=s["threads"],
                latency_before=s.get("latency_before"), latency_after=s.get("latency_after"),
                latency_removed=s.get("latency_removed"),
                latency_stability=s.get("latency_stability"), latency_round_to=s["round_to"])


def _prune_once(model, args, data, flops_ref, removed_target=None, ratio=None, scope=None,
                check_only=False):
    crit = _cached_criterion(args.criterion)
    kwargs = _plan_kwargs(args, crit, data, scope,
                          candidates=1 if check_only or ratio is not None else args.candidates)
    if ratio is not None:
        p = surgery.plan(model, ratio=ratio, **kwargs)
        if check_only:
            require_cuts(model, p)
            return ratio, p, None
        return ratio, p, _cut(model, p)
    return plan_flops_target(model, removed_target, flops_ref, max_ratio=args.max_ratio,
                             apply=not check_only, **kwargs)


def _plan_ratio(plans):
    """The uniform plan ratio of the run (one per round when they differ)."""
    ratios = [p.settings.get("ratio") for p in plans]
    ratios = [None if r is None else round(float(r), 6) for r in ratios]
    return ratios[0] if len(set(ratios)) == 1 else ratios


def _criterion_data(args, splits):
    """Training examples for a data-driven criterion or ``--compensate`` (256) and for
    comparing ``--candidates`` (at least 512, or ``--recalibrate-batches`` ×
    ``--batch-size``): each candidate is recalibrated on up to 30 batches of 32 of them and scored on the first
    512, as :func:`surgery.calibration.candidates.choose_candidate` does by default."""
    fn = _criteria.get_criterion(args.criterion)
    compare = args.candidates > 1 and args.ratio is None
    if not getattr(fn, "needs_data", False) and not compare and \
            not getattr(args, "compensate", False):
        return None
    limit = max(512, args.recalibrate_batches * args.batch_size) if compare else 256
    return dg.as_arrays(splits.train, limit=limit)


def _merge_plans(plans) -> dict:
    return {"rounds": [json.loads(p.to_json()) for p in plans]}


