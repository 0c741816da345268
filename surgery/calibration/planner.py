"""The planner: :func:`surgery.plan`, one entry for every budget.

This module owns the public :func:`plan` and :func:`prune`. ``plan`` checks the arguments,
resolves the model's graph once (flattening nested models), and hands it down: a ratio or
a threshold is planned by a :class:`~surgery.pruning.planning.Ranking`; a FLOPs target by
the allocation of :mod:`surgery.pruning.allocation`; a latency target by the
measure-and-correct loop of :mod:`surgery.calibration.latency`; with ``candidates``, a
budget's allocations are compared after adaptive BN (:mod:`surgery.calibration.candidates`).
``exact=False`` lets cuts cross mean-centred norms and measures how far that moves the
outputs. A plan that removes nothing says so in a warning.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Mapping, Optional, Sequence

from surgery.calibration.candidates import best_candidate
from surgery.calibration.latency import plan_for_latency
from surgery.engine.flatten import flattened
from surgery.engine.graph import ModelGraph, resolve
from surgery.engine.hub_models import task_head
from surgery.engine.rules import rule_for
from surgery.engine.rules.base import approximate
from surgery.pruning.allocation import (
    DEFAULT_MAX_RATIO, Budget, plan_for_flops, plan_for_params,
)
from surgery.pruning.arguments import (
    check_latency_arguments, check_plan_arguments, check_unit_arguments,
)
from surgery.pruning.compensation import measure as measure_compensation
from surgery.pruning.execution import cut_graph, difference
from surgery.pruning.plan import PrunePlan
from surgery.pruning.planning import PlanSpec, Ranking
from surgery.pruning.samples import first_inputs

logger = logging.getLogger(__name__)

#: examples an approximate plan's deviation is measured on
DEVIATION_EXAMPLES = 64


def plan(model, ratio: Optional[float] = 0.3, criterion="l1",
         policy: str = "aggregate", *, threshold: Optional[float] = None,
         per_layer: Optional[Mapping[str, float]] = None, ignore: Sequence[str] = (),
         round_to: Optional[int] = None, min_channels: int = 1, scope: str = "local",
         data=None, flops_target: Optional[float] = None,
         latency_target: Optional[float] = None, runtime: str = "onnxruntime",
         batch_size: int = 1, threads: Optional[int] = None, heads: bool = True,
         head_dims: bool = False, exact: bool = True, candidates: int = 1,
         max_ratio: float = DEFAULT_MAX_RATIO, at_least: bool = False,
         params_target: Optional[float] = None, depth: bool = False,
         query_groups: bool = False, units: bool = True,
         compensate: bool = False) -> PrunePlan:
    """Decide which channels (and heads, head widths, block units) to delete.

    ``ratio``: fraction of each group's channels to delete (or of all channels with
    ``scope="global"``, ranked across groups by normalised importance); ``threshold``:
    instead, delete channels whose score is below it; ``per_layer``: ratios for the groups
    containing the named layers; ``ignore``: layers whose groups are left alone;
    ``round_to``: kept widths are multiples of it; ``min_channels``: never keep fewer.
    ``flops_target``: instead, remove that fraction of ``count_flops(model)`` (a search up
    to the uniform ratio ``max_ratio``; with ``at_least``, never less than the target
    where a plan within 2 points above it exists). ``params_target``: instead, remove that
    fraction of ``model.count_params()`` (the same search). ``latency_target``: instead, remove
    that fraction of the latency measured in ``runtime`` (``"onnxruntime"``, ``"tflite"``
    or ``"tensorflow"``) at ``batch_size`` with ``threads`` (default all cores);
    ``round_to`` then defaults to the CPU's SIMD block, and the plan is checked by timing
    (see :mod:`surgery.calibration.latency`). Output channels that reach a model output
    (the classifier) are never pruned. ``exact=False`` also lets deletions cross layers
    where they are only approximate (mean-centred ``LayerNormalization``); the plan lists
    them in ``settings["approximate"]`` and, given ``data``, how far they moved the
    outputs (``settings["deviation"]``).

    Units no tensor carries are groups of their own, cut at the same ratio: ``heads``
    (whole heads), ``head_dims`` (per-head widths), ``depth`` (whole blocks: keras-hub ViT
    and DeiT encoders', pre-norm decoders'), ``query_groups`` (whole key/value groups of
    grouped-query attention, with their query heads); ``units=False``: channels only.
    Budgets cost and allocate them with the channels (head widths: not by latency);
    ``round_to`` may name a multiple per kind (``{"channels": 8, "mlp": 64}``; an integer
    never rounds heads). ``compensate=True`` (with ``data``) folds removed units' mean
    outputs into the next biases where exact (FLAP; docs/transformers.md). ``candidates``
    N > 1 (a target, ``data``): N ways to share the budget between layers and kinds of
    unit, the one closest to the original on ``data`` kept (EagleEye).

    Example::

        p = surgery.plan(model, ratio=0.5, criterion="l1", policy="intersection")
        print(p.summary())
        smaller = surgery.apply(model, p)
    """
    graph = resolve(model, "plan")
    check_unit_arguments(data, heads=heads, head_dims=head_dims, depth=depth, exact=exact,
                         query_groups=query_groups, units=units, compensate=compensate)
    check_plan_arguments(graph, ratio=ratio, criterion=criterion, policy=policy,
                         threshold=threshold, per_layer=per_layer, ignore=ignore,
                         round_to=1 if round_to is None else round_to,
                         min_channels=min_channels, scope=scope,
                         data=data, flops_target=flops_target, latency_target=latency_target,
                         candidates=candidates, params_target=params_target)
    spec = PlanSpec(ratio, criterion, policy, threshold, dict(per_layer or {}), tuple(ignore),
                    1 if round_to is None else round_to, min_channels, scope, data, heads,
                    head_dims, exact, units=units, depth=depth, query_groups=query_groups)
    spec = _keeping_task_head(model, spec)
    flat = _checked_depth(flattened(graph), depth)
    with approximate(not exact):
        if latency_target is not None:
            runtime_ok = check_latency_arguments(latency_target, runtime, batch_size, threads)
            result = plan_for_latency(flat, latency_target, spec=spec, runtime=runtime_ok.name,
                                      batch_size=batch_size, threads=threads,
                                      round_to=round_to, candidates=candidates)
        else:
            result = _plan_for_target(flat, spec, flops_target, params_target, candidates,
                                      max_ratio=max_ratio, at_least=at_least)
        if not exact:
            _measure_deviation(flat, result, data)
        if compensate:
            result.settings["compensation"] = measure_compensation(flat, result, data)
    if result.empty and any((ratio, threshold, flops_target, latency_target, params_target)):
        logger.warning("plan: nothing to cut in model '%s' (%s); every group is skipped or "
                       "keeps all its units", graph.model.name, _why_empty(result))
    return result


def _keeping_task_head(model, spec: PlanSpec) -> PlanSpec:
    """``spec`` with a keras-hub task's own head (a classifier's ``pooled_dense``) among
    the layers it ignores: cut, the task could not be rebuilt (hub_models.with_family)."""
    head = tuple(name for name in task_head(model) if name not in spec.ignore)
    if not head:
        return spec
    logger.info("plan: %s's head (%s) keeps its widths, so the cut is rebuilt as %s",
                model.name, ", ".join(head), type(model).__name__)
    return spec.replace(ignore=spec.ignore + head)


def _checked_depth(graph: ModelGraph, depth: bool) -> ModelGraph:
    """``graph``, after a warning where ``depth=True`` finds no blocks to remove: no layer
    with a ``"blocks"`` unit axis of several blocks, nor several blocks that are layers of
    their own (:mod:`surgery.engine.rules.depth`)."""
    if not depth:
        return graph
    counts = []
    for node in graph.calls():
        rule = rule_for(node.info)
        if rule is not None:
            counts.append(int(rule.unit_axes(node.info).get("blocks", 0)))
    if max(counts, default=0) > 1 or counts.count(1) > 1:
        return graph
    logger.warning("plan(depth=True): model '%s' has no blocks to remove (keras-hub's ViT "
                   "and DeiT encoders and pre-norm decoder blocks are; post-norm blocks, "
                   "such as BERT's, and a lone block are not); planning widths only",
                   graph.model.name)
    return graph


def _plan_for_target(graph: ModelGraph, spec: PlanSpec, flops_target: Optional[float],
                     params_target: Optional[float], candidates: int, **budget) -> PrunePlan:
    """The plan of a FLOPs or parameter target, or else of ``spec``'s ratio or threshold.
    A parameter target fills greedily: every unit, from none cut, the least important
    (normalised per kind of unit in its layer: surgery.pruning.unit_scales) first,
    whatever its size."""
    if flops_target is not None:
        return _plan_for_budget(graph, spec, Budget(flops_target, **budget), candidates,
                                plan_for_flops)
    if params_target is not None:
        return _plan_for_budget(graph, spec, Budget(params_target, "params_target", "params",
                                                    greedy=True, by_importance=True, **budget),
                                candidates, plan_for_params)
    return Ranking(graph, spec).plan(spec)


def _plan_for_budget(graph: ModelGraph, spec: PlanSpec, budget: Budget, candidates: int,
                     plan_for: Callable) -> PrunePlan:
    """A FLOPs or parameter target's plan (``plan_for``: the allocation over its cost):
    channels, heads, head widths (``head_dims=True``) and block widths costed together."""
    ranking = Ranking(graph, spec)

    def search(variant):
        quiet = dataclasses.replace(budget, quiet=budget.quiet or variant.index > 0)
        return plan_for(ranking, spec, quiet, variant)

    return best_candidate(graph, search, candidates, spec.data)


def _measure_deviation(graph: ModelGraph, result: PrunePlan, data) -> None:
    """An approximate plan's ``settings["deviation"]`` on up to 64 examples of ``data``."""
    if result.settings.get("approximate") and data is not None:
        x = first_inputs(data, DEVIATION_EXAMPLES)
        result.settings["deviation"] = float(difference(graph, cut_graph(graph, result),
                                                        result, x))


def _why_empty(result: PrunePlan) -> str:
    if not result.cuts:
        return "no prunable group: " + ("; ".join(
            f"{k}: {v}" for k, v in list(result.skipped.items())[:3]) or "none found")
    return f"{len(result.cuts)} groups, none cut at these settings; raise ratio or the target"


def prune(model, **plan_kwargs):
    """``apply(model, plan(model, **plan_kwargs))``.

    Example::

        smaller = surgery.prune(model, ratio=0.5, criterion="l1", round_to=8)
    """
    graph = resolve(model, "prune")
    return cut_graph(graph, plan(graph.model, **plan_kwargs))
