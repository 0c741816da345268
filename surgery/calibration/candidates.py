"""Candidate allocations of a budget, chosen by what they keep after adaptive BN (EagleEye).

This module owns the candidate step a budget runs when asked (``surgery.plan(...,
flops_target=F or latency_target=F, candidates=N, data=...)``). The search of
:mod:`surgery.pruning.allocation` runs ``N`` times: candidate 0 is the caller's plan, and
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
from typing import Callable, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from surgery.calibration.batchnorm import DEFAULT_BATCHES, recalibrate_batchnorm
from surgery.engine.graph import ModelGraph
from surgery.engine.zeroing import to_numpy
from surgery.progress import bars_wanted
from surgery.pruning.allocation import Variant
from surgery.pruning.execution import cut_graph
from surgery.pruning.plan import PrunePlan
from surgery.pruning.samples import first_inputs

logger = logging.getLogger(__name__)

#: Examples each candidate is scored on.
DEFAULT_EXAMPLES = 512


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


def _outputs(model, x: np.ndarray, batch_size: int = 256) -> list:
    parts = []
    for start in range(0, len(x), batch_size):
        outs = model(x[start:start + batch_size], training=False)
        parts.append([to_numpy(o) for o in (outs if isinstance(outs, (list, tuple)) else [outs])])
    return [np.concatenate(column) for column in zip(*parts)]


def choose_candidate(graph: ModelGraph, plans: Sequence, data, *, batches: Optional[int] = None,
                     batch_size: int = 32, examples: int = DEFAULT_EXAMPLES,
                     progress: bool = False):
    """The plan of ``plans`` whose cut, after :func:`surgery.recalibrate_batchnorm` on
    ``batches`` batches of ``data``, agrees best with ``graph``'s model on the first ``examples``
    inputs of ``data``; ties go to the earlier plan. Each plan's ``settings`` gets
    ``candidate_score``; the winner's also ``candidate_scores`` (all of them, in order) and
    ``candidate`` (its index).

    Example::

        best = choose_candidate(graph, [plan_a, plan_b], (x_train, y_train))
    """
    x = first_inputs(data, examples)
    reference = _outputs(graph.model, x)
    scores = []
    for p in tqdm(plans, desc="scoring candidate plans", unit="plan", leave=False,
                  disable=not bars_wanted(progress)):
        pruned = recalibrate_batchnorm(cut_graph(graph, p), data, batches or DEFAULT_BATCHES,
                                       batch_size=batch_size)
        p.settings["candidate_score"] = round(agreement(reference, _outputs(pruned, x)), 6)
        scores.append(p.settings["candidate_score"])
        logger.info("candidate %d: agreement %.4f after adaptive BN", len(scores) - 1,
                    scores[-1])
    best = int(np.argmax(scores))
    plans[best].settings.update(candidate=best, candidate_scores=scores)
    return plans[best]


def best_candidate(graph: ModelGraph, search: Callable[[Variant], PrunePlan], candidates: int,
                   data, **options) -> PrunePlan:
    """``search(Variant(k))`` for ``k`` below ``candidates``, the one whose cut agrees best
    after adaptive BN (:func:`choose_candidate`, given ``options``); the plain search's
    plan alone when ``candidates`` is 1."""
    if candidates <= 1:
        return search(Variant(0))
    return choose_candidate(graph, [search(Variant(k)) for k in range(candidates)], data,
                            **options)
