"""Candidate allocations of a budget, chosen by what they keep after adaptive BN (EagleEye).

This module owns the candidate step a budget runs when asked (``surgery.plan(...,
flops_target=F or latency_target=F, candidates=N, data=...)``). The search of
:mod:`surgery.pruning.budget` runs ``N`` times: candidate 0 is the caller's plan, and
each other candidate perturbs how the budget is shared between channel groups (a
:class:`Variant`), never which channels of a group go first (the criterion's order) or
the cost removed. Each candidate is cut, its BatchNormalization statistics are
re-estimated on the data (:func:`surgery.recalibrate_batchnorm`), and it is scored by how
well it agrees with the original model on those examples (top-1 agreement for classifiers,
else the negated relative output error). The best one wins (EagleEye, ECCV 2020: accuracy
right after adaptive BN ranks candidate allocations well, raw accuracy does not).
Candidate 0 is among them, so the chosen plan never scores below the caller's own.
"""
from __future__ import annotations

import logging
import zlib
from typing import Callable, Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: Spread (standard deviation of the log) of the per-layer perturbation factors.
DEFAULT_SPREAD = 0.7
#: Examples each candidate is scored on.
DEFAULT_EXAMPLES = 512


class Variant:
    """The ``index``-th candidate's perturbation of a budget search (index 0: none).

    Every producer layer gets a factor ``exp(N(0, spread))``, fixed by ``(seed, index,
    layer name)``. With ``scope="global"`` the criterion's scores of that layer are raised
    to that power (shifted to be non-negative first), which moves the global ranking's
    cut-off between layers but keeps each layer's order; with ``scope="local"`` the
    uniform ratio ``r`` becomes ``max_ratio * (r / max_ratio) ** factor`` per group, so
    every candidate spans the same range of cuts.

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

    def criterion(self, fn: Callable) -> Callable:
        """``fn`` with every layer's scores raised to that layer's factor."""
        if self.index == 0:
            return fn

        def perturbed(model, layer_names, data=None, **options):
            scores = fn(model, layer_names, data, **options)
            out = {}
            for name, s in scores.items():
                s = np.asarray(s, np.float64)
                out[name] = (s - min(0.0, float(s.min(initial=0.0)))) ** self.factor(name)
            return out

        perturbed.__name__ = getattr(fn, "__name__", "criterion")
        perturbed.needs_data = getattr(fn, "needs_data", False)
        return perturbed

    def ratios(self, ratio: float, groups: Sequence[Sequence[str]], max_ratio: float) -> dict:
        """Per-group ratios (keyed by each group's first producer) for a uniform ``ratio``."""
        if self.index == 0 or ratio <= 0:
            return {}
        return {g[0]: float(max_ratio * min(1.0, ratio / max_ratio) ** self.factor(g[0]))
                for g in groups if g}


def agreement(reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> float:
    """How well ``outputs`` agree with ``reference`` (lists of output arrays): the mean
    top-1 agreement where every output is a vector of two or more scores, else minus the
    largest relative L2 error. Higher is better.

    >>> a = [np.array([[0.9, 0.1], [0.2, 0.8]])]
    >>> agreement(a, [np.array([[0.6, 0.4], [0.7, 0.3]])])
    0.5
    """
    if all(r.ndim >= 2 and r.shape[-1] > 1 for r in reference):
        return float(np.mean([np.mean(np.argmax(r, -1) == np.argmax(o, -1))
                              for r, o in zip(reference, outputs)]))
    return -max(float(np.linalg.norm(r - o) / max(np.linalg.norm(r), 1e-12))
                for r, o in zip(reference, outputs))


def _inputs(data, examples: int) -> np.ndarray:
    """The first ``examples`` inputs of ``data`` (arrays, ``(x, y)`` or batches), as one array."""
    from surgery.pruning.criteria._data import _iter_batches

    parts = [np.asarray(x) for x, _ in _iter_batches(data, max_samples=examples,
                                                      batch_size=min(examples, 256))]
    return np.concatenate(parts)[:examples]


def _outputs(model, x: np.ndarray, batch_size: int = 256) -> list:
    from surgery.engine.zeroing import to_numpy

    parts = []
    for start in range(0, len(x), batch_size):
        outs = model(x[start:start + batch_size], training=False)
        parts.append([to_numpy(o) for o in (outs if isinstance(outs, (list, tuple)) else [outs])])
    return [np.concatenate(column) for column in zip(*parts)]


def choose_candidate(model, plans: Sequence, data, *, batches: Optional[int] = None,
                     batch_size: int = 32, examples: int = DEFAULT_EXAMPLES,
                     progress: bool = False):
    """The plan of ``plans`` whose cut, after :func:`surgery.recalibrate_batchnorm` on
    ``batches`` batches of ``data``, agrees best with ``model`` on the first ``examples``
    inputs of ``data``; ties go to the earlier plan. Each plan's ``settings`` gets
    ``candidate_score``; the winner's also ``candidate_scores`` (all of them, in order) and
    ``candidate`` (its index).

    Example::

        best = choose_candidate(model, [plan_a, plan_b], (x_train, y_train))
    """
    from tqdm.auto import tqdm

    from surgery.pipeline.batchnorm import DEFAULT_BATCHES, recalibrate_batchnorm
    from surgery.pipeline.progress import bars_wanted
    from surgery.pruning.execution import apply

    x = _inputs(data, examples)
    reference = _outputs(model, x)
    scores = []
    for p in tqdm(plans, desc="scoring candidate plans", unit="plan", leave=False,
                  disable=not bars_wanted(progress)):
        pruned = recalibrate_batchnorm(apply(model, p), data, batches or DEFAULT_BATCHES,
                                       batch_size=batch_size)
        p.settings["candidate_score"] = round(agreement(reference, _outputs(pruned, x)), 6)
        scores.append(p.settings["candidate_score"])
        logger.info("candidate %d: agreement %.4f after adaptive BN", len(scores) - 1,
                    scores[-1])
    best = int(np.argmax(scores))
    plans[best].settings.update(candidate=best, candidate_scores=scores)
    return plans[best]
