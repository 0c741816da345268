"""Timing runners fairly on a shared, noisy machine: interleaved medians after warm-up.

This module owns how every latency in :mod:`surgery.cost` is taken: :func:`interleaved`
runs several runners in turn, run by run, so drift on the machine hits all of them alike,
and returns each one's median seconds per call; :func:`model_latency` times one whole model
in a runtime; :func:`compare` times an original and a pruned model interleaved, round
after round, until the ratio of their medians is stable to ``stable`` (or ``max_rounds``
is spent), and says how stable it was.

>>> import time
>>> ms = interleaved({"a": lambda: time.sleep(0.001), "b": lambda: None}, runs=3, warmup=1)
>>> ms["a"] > ms["b"]
True
"""
from __future__ import annotations

import logging
import statistics
import time
from typing import Callable, Dict, List, Mapping, Optional

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
    from surgery.cost.cpu import default_threads
    from surgery.cost.runtimes import get_runtime

    rt = get_runtime(runtime)
    run = rt.runners(model, batch_size, threads or default_threads())[0]
    return interleaved({"model": run}, runs=runs, min_seconds=MIN_ROUND_SECONDS)["model"]


def compare(original, pruned, runtime: str = "onnxruntime", batch_size: int = 1,
            threads: Optional[int] = None, *, runs: int = DEFAULT_RUNS, stable: float = 0.02,
            max_rounds: int = 4, runners: Optional[Mapping[str, Callable]] = None) -> dict:
    """Time ``original`` and ``pruned`` interleaved in ``runtime``; repeat rounds until two
    successive ratio estimates (medians over all rounds so far) differ by at most
    ``stable``. ``runners`` may give ready ``{"original": ..., "pruned": ...}`` runners.
    Returns ``before``/``after`` (seconds), ``ratio`` (after/before), ``rounds``,
    ``ratios`` (the estimate after each round) and ``spread`` (the last change: how stable
    the ratio was).

    Example::

        c = surgery.cost.compare(model, smaller, "onnxruntime", batch_size=32, threads=2)
        c["ratio"], c["spread"]
    """
    from surgery.cost.cpu import default_threads
    from surgery.cost.runtimes import get_runtime

    if runners is None:
        rt = get_runtime(runtime)
        threads = threads or default_threads()
        runners = {"original": rt.runners(original, batch_size, threads)[0],
                   "pruned": rt.runners(pruned, batch_size, threads)[0]}
    times: Dict[str, List[float]] = {}
    ratios: List[float] = []
    for round_ in range(max_rounds):
        interleaved(runners, runs=runs, warmup=2 if round_ == 0 else 0,
                    min_seconds=MIN_ROUND_SECONDS, times=times)
        before = statistics.median(times["original"])
        after = statistics.median(times["pruned"])
        ratios.append(after / before)
        logger.debug("timing round %d: ratio %.4f", round_ + 1, ratios[-1])
        if len(ratios) >= 2 and abs(ratios[-1] - ratios[-2]) <= stable:
            break
    spread = abs(ratios[-1] - ratios[-2]) if len(ratios) >= 2 else float("nan")
    if not spread <= stable:
        logger.warning("the latency ratio did not settle within %.0f points in %d rounds "
                       "(last change %.1f points): the machine is busy", 100 * stable,
                       len(ratios), 100 * spread)
    return dict(before=before, after=after, ratio=ratios[-1], rounds=len(ratios),
                ratios=[round(r, 4) for r in ratios], spread=round(spread, 4))
