"""Latency budgets: a plan that removes a fraction of the latency measured in a runtime.

This module owns :func:`plan_for_latency`, which ``surgery.plan(model, latency_target=F,
runtime=..., batch_size=..., threads=...)`` calls. It times the whole model (once per
architecture: later plans read it from the cost cache), measures (or reads from the cache)
the tables of its prunable layers (:class:`surgery.cost.table.LatencyEstimator`), and lets
the one allocation search of :mod:`surgery.pruning.allocation` (its greedy form, over all
groups at once) spend channels where they buy the most importance per second.
Widths snap to the CPU's SIMD block (:func:`surgery.cost.cpu.simd_block`), or to twice it
where probes show the finer step does not pay (:mod:`surgery.cost.alignment`), unless
``round_to`` is given.

The plan is then checked by timing: the pruned model is built and timed interleaved with
the original (:func:`surgery.cost.timing.compare`, rounds until the standard error of the
paired ratio is within 2 points; a check the plan would keep is timed on until it is
within ``tolerance`` by two standard errors, at most ``FINAL_ROUNDS`` more rounds, so that
a later timing of the same plan lands within it too). While the measured cut misses the
target by more than ``tolerance`` (or, once, by more than half of it, for a new plan), the
tables' predicted savings are scaled and the plan made again (:func:`_next_scale`), up to
``corrections`` times; then it warns with what it reached. The search spends channels in
one order whatever the scale, so a plan is fixed by its *depth* (the tables' unscaled
predicted cut), and every check of an architecture, whatever its target, is a point on one
curve from depth to measured cut. Those points are kept in the cost cache (``landings:``, the latest
``MAX_LANDINGS``), and a plan for a new target starts where they put it (interpolated
between the nearest points on either side, :func:`_start_scale`); the scale a target's
plan kept is remembered too (:func:`_scale_key`), so a repeated plan makes the same plan
and usually needs one check. The converted original and checked candidates are cached
beside the tables (:mod:`surgery.cost.converted`), so it converts only what it has not
seen. ``plan.settings`` says what was asked, chosen and measured.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Optional

from surgery.calibration.candidates import best_candidate
from surgery.cost.alignment import choose_alignment
from surgery.cost.cache import TableCache, digest
from surgery.cost.converted import architecture_of
from surgery.cost.cpu import cpu_features, default_threads, simd_block
from surgery.cost.micro import cpu_key
from surgery.cost.runtimes import _keras_of
from surgery.cost.table import LatencyEstimator
import surgery.cost.timing as timing
from surgery.engine.graph import ModelGraph
from surgery.errors import SurgeryError
from surgery.pruning.allocation import Budget, allocate
from surgery.pruning.arguments import check_latency_arguments
from surgery.pruning.execution import cut_graph
from surgery.pruning.planning import PlanSpec, Ranking

logger = logging.getLogger(__name__)

#: measured cuts this close to the target are accepted
DEFAULT_TOLERANCE = 0.03
#: a new plan whose measured cut is within ``tolerance`` but farther than this fraction of
#: it from the target is made once more, aiming closer (the closer of the two is kept): a
#: later timing in another session moves by a point or two, and should stay within
AIM = 0.5
#: re-plans after the first timing check
DEFAULT_CORRECTIONS = 3
#: a check the plan would keep is timed on, up to ``FINAL_ROUNDS`` more rounds, until it
#: is within ``tolerance`` by two standard errors (or its standard error is ``FINAL_STABLE``)
#: so that a later timing of the plan stays within too
FINAL_STABLE = 0.005
FINAL_ROUNDS = 2
#: checks remembered per architecture (the latest), to start new targets from
MAX_LANDINGS = 40


def plan_for_latency(graph: ModelGraph, latency_target: float, *,
                     spec: Optional[PlanSpec] = None, runtime: str = "onnxruntime",
                     batch_size: int = 1, threads: Optional[int] = None,
                     round_to: Optional[int] = None, check: bool = True,
                     tolerance: float = DEFAULT_TOLERANCE, corrections: Optional[int] = None,
                     cache_dir: Optional[str] = None, progress: bool = True, tables=None,
                     whole: Optional[float] = None, candidates: int = 1):
    """A plan whose pruned model takes ``1 - latency_target`` of the time of ``graph``'s
    (flat) model in ``runtime`` at ``batch_size`` with ``threads`` (default: all cores).

    ``round_to``: kept widths are multiples of it (default: the SIMD block this CPU's
    runtime kernels use, 8 with AVX2 and 16 with AVX-512, or twice it where measured
    probes show that pays). ``check=False`` skips the timing
    check (the plan then rests on the tables alone). ``tables`` (``{layer: LatencyTable}``)
    and ``whole`` (the unpruned model's cost in the tables' unit) replace the measured
    tables and whole-model time. ``spec`` (a :class:`PlanSpec`: criterion, policy, scope,
    min_channels, ignore, per_layer, data) shapes the plans searched; with ``candidates``
    N > 1 each search compares N allocations after adaptive BN
    (:mod:`surgery.calibration.candidates`). ``settings`` records ``latency_target``,
    ``runtime``, ``runtime_version``, ``batch_size``, ``threads``, ``round_to`` and
    ``alignment`` (what was chosen, and why), ``latency_before``/``latency_after``
    (measured seconds), ``latency_removed`` (measured), ``latency_predicted`` (what the
    tables predicted), ``latency_stability`` (the standard error of the measured ratio),
    ``latency_rounds``, ``latency_checks`` (``[predicted cut, measured cut, scale]`` of each
    plan tried) and ``latency_scale`` (the factor the timing check put on the
    tables' predicted savings; ``latency_scale_start`` the one it started from: remembered
    from an earlier plan of this model and target, else where earlier checks of this
    architecture put the target, else the whole model's time over the sum of its layers'
    table times, at most 1).

    Example::

        p = plan_for_latency(graph, 0.5, runtime="onnxruntime", batch_size=32, threads=2)
        p.settings["latency_removed"]   # 0.47 .. 0.53
    """
    spec = (spec or PlanSpec()).replace(heads=False, head_dims=False)
    corrections = DEFAULT_CORRECTIONS if corrections is None else corrections
    rt = check_latency_arguments(latency_target, runtime, batch_size, threads)
    threads = threads or default_threads()
    block = simd_block()
    alignment = dict(simd_block=block, cpu=[f for f in cpu_features() if "avx" in f or
                                            f in ("neon", "asimd", "sve")])
    start = time.perf_counter()
    flat, model = graph.model, graph.model
    ranking = Ranking(graph, spec)
    cache = TableCache(cpu_key(rt, flat, batch_size, threads), cache_dir)
    original = rt.runners(flat, batch_size, threads, cache_folder=cache.folder)[0] \
        if check or whole is None else None
    scale_key = _scale_key(flat, latency_target)
    if whole is None:  # measured once per architecture: the remembered scales rest on it
        whole_key = f"whole:{_architecture_digest(flat)}"
        whole = cache.entries.get(whole_key)
        if whole is None:
            whole = timing.interleaved({"original": original}, min_seconds=1.0)["original"]
            cache.put(whole_key, whole)
            cache.save()
    landings_key = f"landings:{_architecture_digest(flat)}"
    landings = [tuple(x) for x in cache.entries.get(landings_key, [])  # a hand-edited
                if isinstance(x, list) and len(x) == 2]  # cache file costs only the start
    remembered = _start_scale(cache.entries, scale_key, landings, latency_target) \
        if check else None
    estimators: dict = {}

    def estimator():
        if "est" not in estimators:
            estimators["est"] = LatencyEstimator(
                graph, ranking.width_groups(), whole=whole, tables=tables, runtime=rt, batch=batch_size,
                threads=threads, block=block, cache=cache, progress=progress)
            est = estimators["est"]
            # measured alone, the layers' times sum to more than the whole model (2.4x for
            # MobileNetV2 at batch 32 in ONNX Runtime): their savings start scaled to fit
            covered = est.summary()["covered"]
            est.scale = estimators["start"] = remembered or \
                (min(1.0, est.total / covered) if covered > 0 else 1.0)
        return estimators["est"]

    if round_to is None and tables is None:  # measure whether twice the block pays
        probe = choose_alignment(estimator(), rt, batch_size, threads, cache,
                                 block, _keras_of(flat), progress=progress)
        round_to = probe["round_to"]
        alignment.update(probes=probe["probes"], chosen=f"measured: {round_to} pays" if
                         round_to > block else "SIMD block of this CPU (measured: a coarser "
                         "step does not pay)")
    elif round_to is None:
        round_to, alignment["chosen"] = block, "SIMD block of this CPU"
    else:
        alignment["chosen"] = "round_to given"

    searched = spec.replace(round_to=round_to)

    def search(goal):
        def variant(v):
            budget = Budget(goal, name="latency_target", prefix="latency", greedy=True,
                            quiet=check or v.index > 0)
            return allocate(ranking, searched, estimator(), budget, v)
        return best_candidate(graph, variant, candidates, spec.data)

    # one aiming re-plan per new plan; a repeated plan (its scale remembered for this
    # target) has none: it accepts what the first landed
    aim_spent = check and scale_key in cache.entries
    tried, landed, best, unreachable = [], [], None, False
    for attempt in range(corrections + 1 if check else 1):
        p = search(latency_target)
        predicted = p.settings["latency_removed"]
        p.settings["latency_predicted"] = predicted
        unreachable = not p.settings["latency_reachable"] and \
            predicted < latency_target - tolerance
        if not check:
            if unreachable:
                _unreachable(latency_target, f"{predicted:.1%} (predicted)", model, rt)
            best = (p, None, None)
            break
        scale = estimators["est"].scale
        depth = round(predicted / scale, 4) if scale > 0 else None
        if attempt and depth in [d for d, _ in landed]:
            logger.info("latency_target=%.3f: the corrected plan is one already checked; the "
                        "channel steps are too coarse to move by less", latency_target)
            break
        pruned = flat if p.empty else cut_graph(graph, p)
        runners = {"original": original, "pruned": rt.runners(
            pruned, batch_size, threads, cache_folder=cache.folder)[0]}
        timed = timing.compare(flat, pruned, runners=runners)
        miss = abs(1.0 - timed["ratio"] - latency_target)
        sure = max((tolerance - miss) / 2, FINAL_STABLE)
        if miss <= (tolerance if aim_spent else AIM * tolerance) and timed["spread"] > sure:
            timed = timing.compare(flat, pruned, runners=runners, max_rounds=FINAL_ROUNDS,
                            stable=sure, resume=timed, warn=False)
        reached = 1.0 - timed["ratio"]
        tried.append([round(predicted, 4), round(reached, 4), round(scale, 4)])
        if predicted > 0.005 and reached > 0.005 and scale > 0:  # what this plan depth gave
            landed.append((depth, round(reached, 4)))
            cache.put(landings_key, [list(x) for x in (landings + landed)[-MAX_LANDINGS:]])
        logger.info("latency_target=%.3f: the plan removes %.1f%% measured, %.1f%% predicted",
                    latency_target, 100 * reached, 100 * predicted)
        if best is None or abs(reached - latency_target) < \
                abs(1.0 - best[1]["ratio"] - latency_target):
            best = (p, timed, scale)
        missed = abs(1.0 - best[1]["ratio"] - latency_target)
        if missed <= AIM * tolerance or missed <= tolerance and aim_spent:
            break
        aim_spent = aim_spent or missed <= tolerance
        # the tables miss what they do not cover (layout changes, memory traffic): scale
        # their predicted savings, and plan again
        if predicted > 0.005 and reached > 0.005:
            estimators["est"].scale = _next_scale(
                _as_checks(landings + landed, latency_target), latency_target)
    if best[1] is not None and unreachable and \
            1.0 - best[1]["ratio"] < latency_target - tolerance:
        _unreachable(latency_target, f"{1.0 - best[1]['ratio']:.1%} (measured)", model, rt)
    p, timed, kept_scale = best
    if kept_scale is not None:
        cache.put(scale_key, kept_scale)
    cache.save()
    p.settings.update(
        latency_target=float(latency_target), runtime=rt.name,
        runtime_version=rt.version(flat), batch_size=int(batch_size), threads=int(threads),
        round_to=int(round_to), alignment=alignment, latency_checks=tried,
        latency_scale=round(kept_scale if kept_scale is not None else
                            estimators["est"].scale, 4),
        latency_scale_start=round(estimators.get("start", 1.0), 4),
        plan_seconds=round(time.perf_counter() - start, 2),
        cost_table=dict(path=cache.path, measured=cache.misses, cached=cache.hits))
    if timed is not None:
        p.settings.update(
            latency_before=timed["before"], latency_after=timed["after"],
            latency_removed=round(1.0 - timed["ratio"], 4),
            latency_stability=timed["spread"], latency_rounds=timed["rounds"])
        if abs(1.0 - timed["ratio"] - latency_target) > tolerance:
            logger.warning(
                "latency_target=%.3f: the best plan found removes %.1f%% of the measured "
                "latency in %s (batch %d, %d threads; %d plans tried), more than %.0f points "
                "away; the timing may be noisy on a busy machine, or the model's channels "
                "too coarse", latency_target, 100 * (1.0 - timed["ratio"]), rt.name,
                batch_size, threads, len(tried), 100 * tolerance)
    return p


def _architecture_digest(model) -> str:
    return digest(architecture_of(model))


def _scale_key(model, target: float) -> str:
    """The cost-cache entry of the scale that made ``model``'s plan for ``target`` land
    (by architecture: the scale corrects the tables for this graph and depth of cut)."""
    return f"scale:{_architecture_digest(model)}:{target:.3f}"


def _start_scale(entries: dict, key: str, landings: list, target: float) -> Optional[float]:
    """The scale a plan for ``target`` starts from: the one remembered for this target
    (``key``); else the one where this architecture's earlier checks (``landings``, of any
    target) put the target (:func:`_next_scale`); else :func:`_remembered_scale`.

    >>> round(_start_scale({}, "scale:ab:0.500", [(0.8, 0.3), (1.4, 0.7)], 0.5), 4)
    0.446
    """
    if key in entries:
        return entries[key]
    if landings:
        return _next_scale(_as_checks(landings, target), target)
    return _remembered_scale(entries, key)


def _as_checks(landings: list, target: float) -> list:
    """Checks ``(depth, measured cut)`` in the terms of a plan for ``target``:
    ``[target, measured, scale]``, along a curve that rises with depth. The plan search
    spends channels in one order whatever the scale, and stops where its scaled prediction
    meets the target: a plan is fixed by its *depth* (the tables' unscaled predicted cut),
    and every check of an architecture, whatever target it was made for, is a point on one
    rising curve from depth to measured cut, and says which scale would make that depth for
    this target. Timing noise bends the points: checks of one depth, and neighbours that
    fall where the curve rises, are pooled (geometric means; pool-adjacent-violators).

    >>> _as_checks([(1.0, 0.45), (2.0, 0.8), (1.0, 0.55)], 0.5)  # one depth, twice
    [[0.5, 0.4975, 0.5], [0.5, 0.8, 0.25]]
    >>> [round(m, 3) for _, m, _ in _as_checks([(1.0, 0.5), (1.1, 0.45), (1.5, 0.7)], 0.5)]
    [0.474, 0.7]
    """
    logs: dict = {}
    for depth, measured in landings:
        if depth and depth > 0 and measured > 0:
            logs.setdefault(depth, []).append(math.log(measured))
    blocks: list = []  # [sum of log depths, sum of log cuts, points]
    for depth in sorted(logs):
        blocks.append([math.log(depth) * len(logs[depth]), sum(logs[depth]), len(logs[depth])])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]:
            last = blocks.pop()
            blocks[-1] = [a + b for a, b in zip(blocks[-1], last)]
    return [[target, round(math.exp(m / n), 4), target / math.exp(d / n)] for d, m, n in blocks]


def _remembered_scale(entries: dict, key: str) -> Optional[float]:
    """The scale stored under ``key``; else the one of this architecture's nearest target
    (scales change slowly with the depth of the cut); else ``None``.

    >>> _remembered_scale({"scale:ab:0.300": 0.5, "scale:ab:0.700": 0.9}, "scale:ab:0.400")
    0.5
    >>> _remembered_scale({"scale:cd:0.300": 0.5}, "scale:ab:0.400") is None
    True
    """
    if key in entries:
        return entries[key]
    prefix, target = key.rsplit(":", 1)
    near = [(abs(float(k.rsplit(":", 1)[1]) - float(target)), v) for k, v in entries.items()
            if k.startswith(prefix + ":")]
    return min(near)[1] if near else None


def _next_scale(tried: list, target: float) -> float:
    """The scale for the next plan from ``tried`` (``[predicted, measured, scale]`` of each
    check). The measured cut falls as the scale grows, faster than in proportion: about as
    a power law ``measured ~ scale ** -k``, with k of 0.7-2.2 measured on MobileNetV2.
    Once two checks fall on either side of the target, the next scale interpolates the law
    between the nearest two such checks; before that it extrapolates from the check
    nearest the target, with k fitted to the two nearest checks where their cuts differ by
    over 15 % (closer ones are mostly timing noise), else k = 1.5; a scale already tried is
    stepped past (twice as far). All within 0.2-5.

    >>> round(_next_scale([[0.5, 0.25, 1.0]], 0.5), 4)
    0.63
    >>> round(_next_scale([[0.5, 0.18, 1.0], [0.5, 0.57, 0.35], [0.5, 0.44, 0.4]], 0.5), 4)
    0.3745
    >>> round(_next_scale([[0.5, 0.534, 0.4249], [0.5, 0.555, 0.4437]], 0.5), 4)  # not 0.4437
    0.4639
    """
    points = [(math.log(r), math.log(s)) for _, r, s in tried if r > 0.005 and s > 0]
    goal = math.log(target)
    below = [p for p in points if p[0] < goal]
    above = [p for p in points if p[0] > goal]
    if below and above:
        (r0, s0), (r1, s1) = max(below), min(above)
        scale = math.exp(s0 + (goal - r0) / (r1 - r0) * (s1 - s0))
    else:
        predicted, reached, scale = tried[-1]
        k, near = 1.5, (math.log(reached / max(predicted, 1e-6)) + goal, math.log(scale))
        if len(points) >= 2:
            near, other = sorted(points, key=lambda p: abs(p[0] - goal))[:2]
            if abs(near[0] - other[0]) > math.log(1.15) and near[1] != other[1]:
                k = min(max(-(near[0] - other[0]) / (near[1] - other[1]), 0.5), 3.0)
        step = min(max(near[0] - goal, -math.log(3.0)), math.log(3.0))
        scale = math.exp(near[1] + step / k)
        tried_scales = [s for _, _, s in tried]
        for _ in range(3):  # where the cut did not follow the scale, a repeat plan is wasted
            if all(abs(scale / t - 1) > 0.01 for t in tried_scales):
                break
            step *= 2
            scale = math.exp(near[1] + step / k)
    return min(max(scale, 0.2), 5.0)


def _unreachable(target, reached: str, model, rt):
    raise SurgeryError(
        f"latency_target={target}: even the deepest plan removes only {reached} of the "
        f"latency of model '{model.name}' in {rt.name}; ask for less, or free more channels "
        "(smaller min_channels, fewer ignore= layers, round_to=1)")
