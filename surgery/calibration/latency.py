"""Latency budgets: a plan that removes a fraction of the latency measured in a runtime.

This module owns :func:`plan_for_latency`, which ``surgery.plan(model, latency_target=F,
runtime=..., batch_size=..., threads=...)`` calls: the measure-and-correct loop of a latency
target. It times the whole model (once per architecture: later plans read it from the cost
cache), measures (or reads from the cache) the tables of its prunable layers
(:class:`surgery.cost.table.LatencyEstimator`), and lets the one allocation search of
:mod:`surgery.pruning.allocation` (its greedy form, over all groups at once) spend channels
where they buy the most importance per second. Widths snap to the CPU's SIMD block
(:func:`surgery.cost.cpu.simd_block`), or to twice it where probes show the finer step does
not pay (:mod:`surgery.cost.alignment`), unless ``round_to`` is given.

The plan is then checked by timing: the pruned model is built and timed interleaved with
the original (:func:`surgery.cost.timing.compare`, rounds until the standard error of the
paired ratio is within 2 points). The tables miss what they do not cover (layout changes,
memory traffic), so their predicted savings carry a *scale*, and each check is a point of
a :class:`~surgery.calibration.curve.LatencyCurve` (plan depth -> measured cut); the curve
of this run's checks gives the scale of the next plan, up to ``corrections`` times. One rule,
:class:`Tolerance`, says when a check is close enough; a correction that comes back to a
plan already checked is searched again a little past it, and stops where that finds no new
plan (the steps are too coarse to move by less); then it warns with what it reached. The
checks and the scale each target kept are stored in the cost cache, so a new target starts
where the stored curve puts it and a repeated plan makes the same plan and usually needs
one check; the converted original and checked candidates
are cached beside the tables (:mod:`surgery.cost.converted`). ``plan.settings`` says what
was asked, chosen and measured.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, List, Optional, Sequence, Tuple

from surgery.calibration.candidates import best_candidate
from surgery.calibration.curve import MIN_CUT, SCALE_RANGE, LatencyCurve, target_key
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
from surgery.pruning.plan import PrunePlan
from surgery.pruning.criteria.units import unit_kind
from surgery.pruning.planning import PlanSpec, Ranking

logger = logging.getLogger(__name__)

#: measured cuts this close to the target are accepted (0.03: within 3 points)
DEFAULT_TOLERANCE = 0.03
#: a new plan's first landing is accepted only this close, as a fraction of the tolerance
#: (else the plan is made once more, aiming closer): a later timing of the same plan, in
#: another session, moves by a point or two and should still be within the tolerance
AIM_WITHIN = 0.5
#: a check about to be accepted is timed on until it lies within the tolerance by this
#: many standard errors ...
STANDARD_ERRORS = 2
#: ... or its standard error is this small (half a point: a floor, so that a check at the
#: band's edge does not ask for an ever tighter timing)
FINEST_STANDARD_ERROR = 0.005
#: ... for at most this many more timing rounds
TIME_ON_ROUNDS = 2
#: re-plans after the first timing check
DEFAULT_CORRECTIONS = 3
#: a correction that makes a plan already checked is searched again at a scale this much
#: farther (then twice, four times ... as far), at most ``NUDGES`` times
NUDGE_STEP = 0.05
NUDGES = 4
#: seconds the whole model is timed for, once per architecture: every scale rests on it
WHOLE_MODEL_SECONDS = 1.0


@dataclasses.dataclass
class Tolerance:
    """When a measured cut is close enough to ``target``: the one rule of the loop.

    A cut is accepted within ``band`` of the target; but a new plan aims closer once: until
    the best check so far is within ``band`` (``aimed``), only a cut within ``AIM_WITHIN``
    of the band is accepted. A repeated plan (made before, its scale kept) starts
    ``aimed``: it accepts what it lands within ``band``. A check that would be accepted is
    first timed on until it is inside the band by ``STANDARD_ERRORS`` standard errors
    (:meth:`standard_error_needed`).

    >>> rule = Tolerance(0.4, band=0.03)
    >>> rule.accepts(0.39), rule.accepts(0.375)
    (True, False)
    >>> rule.settle(0.375)   # within the band, but farther than half of it: aim once more
    False
    >>> rule.settle(0.375)   # the aim is spent
    True
    >>> round(rule.standard_error_needed(0.39), 4)   # 2 points inside the band, by 2 SE
    0.01
    """

    target: float
    band: float = DEFAULT_TOLERANCE
    aimed: bool = False

    def miss(self, cut: float) -> float:
        return abs(cut - self.target)

    def accepts(self, cut: float) -> bool:
        """Whether a check that measured ``cut`` ends the search."""
        return self.miss(cut) <= (self.band if self.aimed else AIM_WITHIN * self.band)

    def settle(self, best: float) -> bool:
        """Whether the search stops at its best cut so far; a best cut within the band
        spends the one aim."""
        if self.accepts(best):
            return True
        self.aimed = self.aimed or self.miss(best) <= self.band
        return False

    def standard_error_needed(self, cut: float) -> float:
        """How stable a timing of ``cut`` must be to lie surely within the band."""
        return max((self.band - self.miss(cut)) / STANDARD_ERRORS, FINEST_STANDARD_ERROR)


@dataclasses.dataclass
class _Check:
    """One plan of the loop: the scale it was searched at, what the tables predicted it
    cuts, and what timing measured (``timed``: a :func:`surgery.cost.timing.compare`
    result, ``None`` before timing)."""

    plan: PrunePlan
    predicted: float
    scale: float
    timed: Optional[dict] = None

    @property
    def depth(self) -> Optional[float]:
        """The tables' unscaled predicted cut, which fixes the plan."""
        return round(self.predicted / self.scale, 4) if self.scale > 0 else None

    @property
    def measured(self) -> float:
        return 1.0 - self.timed["ratio"]

    @property
    def on_curve(self) -> bool:
        """Whether this check is a point of the curve (cuts below noise are not)."""
        return self.predicted > MIN_CUT and self.measured > MIN_CUT and self.scale > 0

    def row(self) -> list:
        return [round(self.predicted, 4), round(self.measured, 4), round(self.scale, 4)]


@dataclasses.dataclass
class _Bench:
    """Where plans are timed: the runtime and its settings, the cost cache, the original's
    runner (``None`` when nothing is timed), the architecture's digest (which keys the
    whole model's time) and the curve's key: the architecture and the kinds of unit the
    plans cut (a plan that removes blocks saves time otherwise than one that trims
    widths, so each keeps its own curve and scales)."""

    graph: ModelGraph
    rt: object
    batch: int
    threads: int
    cache: TableCache
    original: Optional[Callable]
    architecture: str
    block: int
    curve_key: str = ""

    @classmethod
    def open(cls, graph: ModelGraph, rt, batch: int, threads: int,
             cache_dir: Optional[str], timed: bool, kinds: Sequence[str] = ("channels",)
             ) -> "_Bench":
        flat = graph.model
        cache = TableCache(cpu_key(rt, flat, batch, threads), cache_dir)
        original = rt.runners(flat, batch, threads, cache_folder=cache.folder)[0] \
            if timed else None
        architecture = digest(architecture_of(flat))
        kinds = sorted(set(kinds))
        curve_key = architecture if kinds in ([], ["channels"]) else \
            digest([architecture, kinds])  # channels alone: the key curves had before
        return cls(graph, rt, batch, threads, cache, original, architecture, simd_block(),
                   curve_key)

    def whole_time(self) -> float:
        """The whole model's seconds: from the cache, else timed and saved at once."""
        seconds = self.cache.whole_time(self.architecture)
        if seconds is None:
            seconds = timing.interleaved({"original": self.original},
                                         min_seconds=WHOLE_MODEL_SECONDS)["original"]
            self.cache.put_whole(self.architecture, seconds)
            self.cache.save()
        return seconds

    def alignment(self, round_to: Optional[int], est: LatencyEstimator, measured: bool,
                  progress: bool) -> Tuple[int, dict]:
        """``round_to`` and the ``alignment`` setting: given, else probed where the tables
        are measured (:func:`choose_alignment`), else the SIMD block."""
        block = self.block
        alignment = dict(simd_block=block, cpu=[f for f in cpu_features() if "avx" in f or
                                                f in ("neon", "asimd", "sve")])
        if round_to is not None:
            return round_to, dict(alignment, chosen="round_to given")
        if not measured:
            return block, dict(alignment, chosen="SIMD block of this CPU")
        probe = choose_alignment(est, self.rt, self.batch, self.threads, self.cache, block,
                                 _keras_of(self.graph.model), progress=progress)
        chosen = f"measured: {probe['round_to']} pays" if probe["round_to"] > block else \
            "SIMD block of this CPU (measured: a coarser step does not pay)"
        return probe["round_to"], dict(alignment, probes=probe["probes"], chosen=chosen)

    def time(self, check: _Check, rule: Tolerance) -> dict:
        """Time ``check``'s pruned model against the original; one the rule would accept
        is timed on until it is surely within the band."""
        flat = self.graph.model
        pruned = flat if check.plan.empty else cut_graph(self.graph, check.plan)
        runners = {"original": self.original, "pruned": self.rt.runners(
            pruned, self.batch, self.threads, cache_folder=self.cache.folder)[0]}
        timed = timing.compare(flat, pruned, runners=runners)
        cut, needed = 1.0 - timed["ratio"], rule.standard_error_needed(1.0 - timed["ratio"])
        if rule.accepts(cut) and timed["spread"] > needed:
            timed = timing.compare(flat, pruned, runners=runners, max_rounds=TIME_ON_ROUNDS,
                                   stable=needed, resume=timed, warn=False)
        return timed


def _timed_ranking(graph: ModelGraph, spec: PlanSpec) -> Ranking:
    """The ranking of ``graph``'s groups, refused where it holds blocks that are layers of
    their own (a table times one layer's units)."""
    ranking = Ranking(graph, spec)
    stacked = [g.name for g in ranking.groups if g.axis is not None and len(g.producers) > 1]
    if stacked:
        raise SurgeryError(
            f"latency_target with depth=True: the blocks of {stacked[0]} are layers of their "
            "own, which the latency tables cannot time yet; plan them with flops_target= or "
            "params_target=, or with depth=False")
    return ranking


def plan_for_latency(graph: ModelGraph, latency_target: float, *,
                     spec: Optional[PlanSpec] = None, runtime: str = "onnxruntime",
                     batch_size: int = 1, threads: Optional[int] = None,
                     round_to: Optional[int] = None, check: bool = True,
                     tolerance: float = DEFAULT_TOLERANCE, corrections: Optional[int] = None,
                     cache_dir: Optional[str] = None, progress: bool = True, tables=None,
                     whole: Optional[float] = None, candidates: int = 1) -> PrunePlan:
    """A plan whose pruned model takes ``1 - latency_target`` of the time of ``graph``'s
    (flat) model in ``runtime`` at ``batch_size`` with ``threads`` (default: all cores).

    ``round_to``: kept widths are multiples of it (default: the SIMD block this CPU's
    runtime kernels use, 8 with AVX2 and 16 with AVX-512, or twice it where measured
    probes show that pays). ``check=False`` skips the timing check (the plan then rests on
    the tables alone). ``tolerance``: the band of :class:`Tolerance`; ``corrections``:
    re-plans after the first check (default :data:`DEFAULT_CORRECTIONS`). ``tables``
    (``{layer: LatencyTable}``) and ``whole`` (the unpruned model's cost in the tables'
    unit) replace the measured tables and whole-model time. ``spec`` (a :class:`PlanSpec`:
    criterion, policy, scope, min_channels, ignore, per_layer, data) shapes the plans
    searched; with ``candidates`` N > 1 each search compares N allocations after adaptive
    BN (:mod:`surgery.calibration.candidates`). ``settings`` records ``latency_target``,
    ``runtime``, ``runtime_version``, ``batch_size``, ``threads``, ``round_to`` and
    ``alignment`` (what was chosen, and why), ``latency_before``/``latency_after``
    (measured seconds), ``latency_removed`` (measured), ``latency_predicted`` (what the
    tables predicted), ``latency_stability`` (the standard error of the measured ratio),
    ``latency_rounds``, ``latency_checks`` (``[predicted cut, measured cut, scale]`` of each
    plan tried) and ``latency_scale`` (the factor the timing check put on the tables'
    predicted savings; ``latency_scale_start`` the one it started from: the one this
    model's plan for this target kept, else where the curve of this architecture's checks
    puts the target, else the whole model's time over the sum of its layers' table times,
    at most 1).

    Example::

        p = plan_for_latency(graph, 0.5, runtime="onnxruntime", batch_size=32, threads=2)
        p.settings["latency_removed"]   # 0.47 .. 0.53
    """
    started = time.perf_counter()
    spec = spec or PlanSpec()
    rt = check_latency_arguments(latency_target, runtime, batch_size, threads)
    ranking = _timed_ranking(graph, spec)
    bench = _Bench.open(graph, rt, batch_size, threads or default_threads(), cache_dir,
                        timed=check or whole is None,
                        kinds=[unit_kind(g.axis) for g in ranking.groups])
    curve = LatencyCurve(*bench.cache.curve(bench.curve_key))
    est = LatencyEstimator(
        graph, ranking.width_groups(), whole=bench.whole_time() if whole is None else whole,
        tables=tables, runtime=rt, batch=batch_size, threads=bench.threads, block=bench.block,
        cache=bench.cache, progress=progress, units=ranking.unit_groups())
    start = curve.start_scale(latency_target) if check else None  # else: the tables alone
    est.scale = start = start or _table_scale(est)
    round_to, alignment = bench.alignment(round_to, est, tables is None, progress)
    search = _searcher(graph, ranking, spec.replace(round_to=round_to), est, latency_target,
                       candidates, quiet=check)
    rule = Tolerance(latency_target, tolerance, aimed=curve.repeated(latency_target))
    if check:
        corrections = DEFAULT_CORRECTIONS if corrections is None else corrections
        best, checks, last = _calibrate(search, est, bench, rule, corrections)
        _remember(bench, checks, best, latency_target)
    else:
        best = last = search()
        checks = []
    _check_reachable(best, last, rule, graph.model, rt)
    bench.cache.save()
    best.plan.settings.update(
        round_to=round_to if isinstance(round_to, int) else dict(round_to),
        alignment=alignment, latency_scale_start=round(start, 4),
        plan_seconds=round(time.perf_counter() - started, 2))
    _record(best, checks, rule, bench)
    return best.plan


def _table_scale(est: LatencyEstimator) -> float:
    """The scale with nothing checked: measured alone, the layers' times sum to more than
    the whole model (2.4x for MobileNetV2 at batch 32 in ONNX Runtime), so their savings
    start scaled to fit (at most 1)."""
    covered = est.summary()["covered"]
    return min(1.0, est.total / covered) if covered > 0 else 1.0


def _searcher(graph: ModelGraph, ranking: Ranking, spec: PlanSpec, est: LatencyEstimator,
              target: float, candidates: int, quiet: bool) -> Callable[[], _Check]:
    """A function that plans for ``target`` at ``est``'s scale now."""
    def variant(v):
        budget = Budget(target, name="latency_target", prefix="latency", greedy=True,
                        quiet=quiet or v.index > 0)
        return allocate(ranking, spec, est, budget, v)

    def search() -> _Check:
        p = best_candidate(graph, variant, candidates, spec.data)
        p.settings["latency_predicted"] = p.settings["latency_removed"]
        return _Check(p, p.settings["latency_removed"], est.scale)
    return search


def _calibrate(search: Callable[[], _Check], est: LatencyEstimator, bench: _Bench,
               rule: Tolerance, corrections: int) -> Tuple[_Check, List[_Check], _Check]:
    """Plan, time, and correct the scale along the curve of this run's checks until
    ``rule`` settles, a correction comes back to plans already checked however it is
    nudged (:func:`_unchecked`), or ``corrections`` are spent. Returns the check nearest
    the target, every check timed, and the last one.

    Checks stored from earlier runs set only where the first plan starts: another process
    times the same plan several points apart on a busy machine (bench/results/
    vit_fashion_mnist.md), and pooled with this run's checks they held its corrections
    back (a plan stopped 7 points short)."""
    checks: List[_Check] = []
    curve = LatencyCurve()
    for _ in range(corrections + 1):
        searched = _unchecked(search, est, checks, rule)
        if searched is None:
            logger.info("latency_target=%.3f: the corrected plans are all ones already "
                        "checked; the channel steps are too coarse to move by less",
                        rule.target)
            break
        last = searched
        last.timed = bench.time(last, rule)
        checks.append(last)
        logger.info("latency_target=%.3f: the plan removes %.1f%% measured, %.1f%% predicted",
                    rule.target, 100 * last.measured, 100 * last.predicted)
        if last.on_curve:
            curve.add(last.depth, round(last.measured, 4))
        best = min(checks, key=lambda c: rule.miss(c.measured))
        if rule.settle(best.measured):
            break
        if last.on_curve:
            est.scale = curve.scale_for(rule.target)
    return best, checks, last


def _unchecked(search: Callable[[], _Check], est: LatencyEstimator, checks: List[_Check],
               rule: Tolerance) -> Optional[_Check]:
    """The plan at ``est``'s scale; where it is one already checked, the plan at a scale
    nudged past it (toward the target from what that check measured, by a growing step),
    up to :data:`NUDGES` times; ``None`` where every plan searched was checked before.

    With units as coarse as a ViT's heads, a corrected scale often makes a plan already
    timed (a head stays the cheapest step over a range of scales); before the nudge the
    loop stopped there, a few points from the target with corrections left."""
    for nudge in range(NUDGES + 1):
        last = search()
        same = [c for c in checks if c.depth == last.depth]
        if not same:
            return last
        # a cut past the target asks for a shallower plan: a larger scale
        step = NUDGE_STEP * 2 ** nudge
        est.scale = min(max(est.scale * ((1 + step) if same[0].measured > rule.target else
                                         1 / (1 + step)), SCALE_RANGE[0]), SCALE_RANGE[1])
    return None


def _remember(bench: _Bench, checks: List[_Check], best: _Check, target: float) -> None:
    """Store the checks as points of the architecture's curve, and the scale kept."""
    for c in checks:
        if c.on_curve:
            bench.cache.add_point(bench.curve_key, c.depth, round(c.measured, 4))
    bench.cache.keep_scale(bench.curve_key, target_key(target), best.scale)


def _check_reachable(best: _Check, last: _Check, rule: Tolerance, model, rt) -> None:
    """Raise where even the deepest plan (the search said the target is out of its reach)
    falls short of the target by more than the band: measured where timed, else
    predicted."""
    short = rule.target - rule.band
    if last.plan.settings["latency_reachable"] or last.predicted >= short:
        return
    if best.timed is None:
        reached = f"{best.predicted:.1%} (predicted)"
    elif best.measured < short:
        reached = f"{best.measured:.1%} (measured)"
    else:
        return
    raise SurgeryError(
        f"latency_target={rule.target}: even the deepest plan removes only {reached} of the "
        f"latency of model '{model.name}' in {rt.name}; ask for less, or free more channels "
        "(smaller min_channels, fewer ignore= layers, round_to=1)")


def _record(best: _Check, checks: List[_Check], rule: Tolerance, bench: _Bench) -> None:
    """The settings of the kept plan: what was asked, the runtime, the checks and what was
    measured; a warning where it missed the band."""
    rt, cache = bench.rt, bench.cache
    best.plan.settings.update(
        latency_target=float(rule.target), runtime=rt.name,
        runtime_version=rt.version(bench.graph.model), batch_size=int(bench.batch),
        threads=int(bench.threads), latency_checks=[c.row() for c in checks],
        latency_scale=round(best.scale, 4),
        cost_table=dict(path=cache.path, measured=cache.misses, cached=cache.hits))
    timed = best.timed
    if timed is None:
        return
    best.plan.settings.update(
        latency_before=timed["before"], latency_after=timed["after"],
        latency_removed=round(best.measured, 4), latency_stability=timed["spread"],
        latency_rounds=timed["rounds"])
    if rule.miss(best.measured) > rule.band:
        logger.warning(
            "latency_target=%.3f: the best plan found removes %.1f%% of the measured "
            "latency in %s (batch %d, %d threads; %d plans tried), more than %.0f points "
            "away; the timing may be noisy on a busy machine, or the model's channels "
            "too coarse", rule.target, 100 * best.measured, rt.name, bench.batch,
            bench.threads, len(checks), 100 * rule.band)
