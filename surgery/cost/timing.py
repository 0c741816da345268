"""Timing runners fairly on a shared, noisy machine: interleaved medians after warm-up.

This module owns how every latency in :mod:`surgery.cost` is taken: :func:`interleaved`
runs several runners in turn, run by run, so drift on the machine hits all of them alike,
and returns each one's median seconds per call; :func:`model_latency` times one whole model
in a runtime; :func:`paired_ratio` estimates how much faster one runner is than another
from their interleaved samples; :func:`time_until_stable` times runners interleaved, round
after round, until every runner's estimate against the first is stable to ``stable`` (or
``max_rounds`` is spent); :func:`compare` does so for an original and a pruned model, and
says how stable it was.

On a shared machine a run's time wanders with what the neighbours do, and runs next to
each other wander together (consecutive runs of two MobileNetV2s at batch 32 correlated at
0.7-0.8 here, while single runs of one model spread ±14 %). So a ratio is estimated from
pairs: each run of the pruned model against the geometric mean of the original's runs just
before and just after it, which cancels most of that drift (the standard deviation of a
20-pair estimate fell from 2.3 to 1.6 points against the ratio of two medians).

>>> import time
>>> ms = interleaved({"a": lambda: time.sleep(0.001), "b": lambda: None}, runs=3, warmup=1)
>>> ms["a"] > ms["b"]
True
"""
from __future__ import annotations

import logging
import math
import statistics
import time
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from surgery.cost.cpu import default_threads
from surgery.cost.runtimes import get_runtime

logger = logging.getLogger(__name__)

#: Each runner is timed at least this many times per round.
DEFAULT_RUNS = 7
#: ... and for at least this many seconds per round (fast batch-1 models run more often).
MIN_ROUND_SECONDS = 0.3


def interleaved(runners: Mapping[str, Callable[[], object]], runs: int = DEFAULT_RUNS,
                warmup: int = 2, min_seconds: float = 0.0,
                times: Optional[Dict[str, List[float]]] = None) -> Dict[str, float]:
    """Median seconds per call of each runner, the runners taking turns run by run.
    ``times`` (name -> list) collects every sample, across calls."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times = {} if times is None else times
    fresh: Dict[str, List[float]] = {name: [] for name in runners}
    start = time.perf_counter()
    n = 0
    while n < runs or time.perf_counter() - start < min_seconds and n < 50 * runs:
        for name, run in runners.items():
            t0 = time.perf_counter()
            run()
            fresh[name].append(time.perf_counter() - t0)
        n += 1
    for name, samples in fresh.items():
        times.setdefault(name, []).extend(samples)
    return {name: statistics.median(t) for name, t in fresh.items()}


def model_latency(model, runtime: str = "onnxruntime", batch_size: int = 1,
                  threads: Optional[int] = None, runs: int = DEFAULT_RUNS) -> float:
    """Median seconds of one call of ``model`` on a batch of ``batch_size`` in ``runtime``.

    Example::

        surgery.cost.model_latency(model, "onnxruntime", batch_size=32, threads=2)
    """
    rt = get_runtime(runtime)
    run = rt.runners(model, batch_size, threads or default_threads())[0]
    return interleaved({"model": run}, runs=runs, min_seconds=MIN_ROUND_SECONDS)["model"]


def paired_ratio(first: List[float], second: List[float]) -> Tuple[float, float]:
    """The ratio of ``second``'s run times to ``first``'s from samples taken in turns
    (``first[i]``, then ``second[i]``, then ``first[i + 1]``...), and its standard error.

    Each ``second[i]`` is divided by the geometric mean of ``first[i]`` and
    ``first[i + 1]`` (the last by ``first[i]`` alone); the estimate is the median of those
    ratios, and the error is that of a median (1.25 × 1.48 × MAD / sqrt(n)).

    >>> paired_ratio([1, 4, 16], [1, 4, 8])  # the machine slowing fourfold run by run
    (0.5, 0.0)
    >>> round(paired_ratio([1.0, 1.0, 1.0], [0.5, 0.7, 0.6])[0], 3)
    0.6
    """
    n = min(len(first), len(second))
    a, b = np.asarray(first[:n], dtype=float), np.asarray(second[:n], dtype=float)
    ratios = b / np.sqrt(a * np.append(a[1:], a[-1]))
    median = float(np.median(ratios))
    mad = float(np.median(np.abs(ratios - median)))
    return median, 1.2533 * 1.4826 * mad / math.sqrt(len(ratios))


def time_until_stable(runners: Mapping[str, Callable[[], object]], *,
                      runs: int = DEFAULT_RUNS, stable: float = 0.02, max_rounds: int = 4,
                      min_seconds: float = MIN_ROUND_SECONDS,
                      times: Optional[Dict[str, List[float]]] = None
                      ) -> Dict[str, List[Tuple[float, float]]]:
    """Time ``runners`` :func:`interleaved`, in rounds of at least ``runs`` runs each, until
    the :func:`paired_ratio` of every runner against the first has a standard error of at
    most ``stable`` (over at least ``2 * runs`` samples), or ``max_rounds`` rounds are spent.
    ``times`` (name -> samples, e.g. an earlier call's) is extended. Returns, for every
    runner but the first, its ``(ratio, standard error)`` after each round timed.

    >>> import time
    >>> spin = lambda s: (lambda: time.sleep(s))
    >>> times = {}
    >>> rounds = time_until_stable({"a": spin(0.002), "b": spin(0.001)}, runs=3,
    ...                            stable=1.0, min_seconds=0.0, times=times)
    >>> len(rounds["b"]), len(times["a"]), rounds["b"][-1][0] < 1
    (2, 6, True)
    """
    times = {} if times is None else times
    first, others = list(runners)[0], list(runners)[1:]
    history: Dict[str, List[Tuple[float, float]]] = {name: [] for name in others}
    for round_ in range(max_rounds):
        if len(times.get(first, ())) >= 2 * runs and all(
                paired_ratio(times[first], times[name])[1] <= stable for name in others):
            break
        interleaved(runners, runs=runs, warmup=0 if times.get(first) else 2,
                    min_seconds=min_seconds, times=times)
        for name in others:
            history[name].append(paired_ratio(times[first], times[name]))
        logger.debug("timing round %d: %s", round_ + 1, {
            name: "%.4f ± %.4f" % h[-1] for name, h in history.items()})
    return history


def compare(original, pruned, runtime: str = "onnxruntime", batch_size: int = 1,
            threads: Optional[int] = None, *, runs: int = DEFAULT_RUNS, stable: float = 0.02,
            max_rounds: int = 4, runners: Optional[Mapping[str, Callable]] = None,
            resume: Optional[dict] = None, warn: bool = True) -> dict:
    """Time ``original`` and ``pruned`` interleaved in ``runtime``, in rounds of ``runs``
    pairs, until the standard error of their :func:`paired_ratio` over all rounds so far is
    at most ``stable`` (over at least ``2 * runs`` pairs, in at most ``max_rounds`` rounds;
    :func:`time_until_stable`). ``runners`` may give
    ready ``{"original": ..., "pruned": ...}`` runners. Returns ``before`` (the original's
    median seconds), ``after`` (``before`` times ``ratio``, so the two always agree),
    ``ratio`` (the paired estimate of the pruned model's time over the original's), ``rounds``,
    ``ratios`` (the estimate after each round), ``spread`` (its standard error: how
    stable it was) and ``times`` (every sample). ``resume``, an earlier result for the same
    runners, goes on from its samples (up to ``max_rounds`` more rounds), for a tighter
    ``stable``. Logs a warning when the ratio does not settle, unless ``warn=False``.

    Example::

        c = surgery.cost.compare(model, smaller, "onnxruntime", batch_size=32, threads=2)
        c["ratio"], c["spread"]
    """
    if runners is None:
        rt = get_runtime(runtime)
        threads = threads or default_threads()
        runners = {"original": rt.runners(original, batch_size, threads)[0],
                   "pruned": rt.runners(pruned, batch_size, threads)[0]}
    runners = {"original": runners["original"], "pruned": runners["pruned"]}  # this order
    times: Dict[str, List[float]] = {k: list(v) for k, v in (resume or {}).get(
        "times", {}).items()}
    rounds = time_until_stable(runners, runs=runs, stable=stable, max_rounds=max_rounds,
                               times=times)["pruned"]
    ratios = list((resume or {}).get("ratios", [])) + [r for r, _ in rounds]
    ratio, spread = paired_ratio(times["original"], times["pruned"])
    if warn and not spread <= stable:
        logger.warning("the latency ratio did not settle within %.0f points in %d rounds "
                       "(standard error %.1f points): the machine is busy", 100 * stable,
                       len(ratios), 100 * spread)
    before = float(statistics.median(times["original"]))
    return dict(before=before, after=before * ratio, ratio=ratio,
                rounds=len(ratios), ratios=[round(r, 4) for r in ratios],
                spread=round(spread, 4), times=times)
