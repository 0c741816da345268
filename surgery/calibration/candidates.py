"""Candidate allocations of a budget, chosen by what they keep after adaptive BN (EagleEye).

This module owns the candidate step a budget runs when asked (``surgery.plan(...,
flops_target=F, params_target=F or latency_target=F, candidates=N, data=...)``). The
search of :mod:`surgery.pruning.allocation` runs ``N`` times: candidate 0 is the caller's
plan, and each other candidate perturbs how the budget is shared between groups and
between kinds of unit (a :class:`Variant`), never which units of a group go first (the
criterion's order) or the cost removed. Each candidate is cut (imitated by zeroing its
cuts on one copy of the model, :mod:`~surgery.calibration.stand_in`, so that no candidate
compiles a model of its own), its BatchNormalization statistics are re-estimated on the
data (:func:`surgery.recalibrate_batchnorm`), and it is scored by how well it agrees with
the original model on those examples (:func:`agreement`: the KL divergence of a language
model's next-token distributions, top-1 agreement for classifiers, else the relative
output error). The best one wins (EagleEye, ECCV 2020: accuracy right after adaptive BN
ranks candidate allocations well, raw accuracy does not).
Candidate 0 is among them, so the chosen plan never scores below the caller's own.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from surgery._backend import tf
from surgery.calibration.batchnorm import DEFAULT_BATCHES, recalibrate_batchnorm
from surgery.engine.compiled import compiled_call
from surgery.calibration.stand_in import StandIn, model_outputs
from surgery.engine.graph import ModelGraph
from surgery.progress import bars_wanted
from surgery.pruning.allocation import Variant
from surgery.pruning.execution import cut_graph
from surgery.pruning.plan import PrunePlan
from surgery.pruning.samples import first_inputs, n_examples

logger = logging.getLogger(__name__)

#: Examples each candidate is scored on.
DEFAULT_EXAMPLES = 512
#: Output values (float64) compared per candidate at most: fewer examples are scored where
#: the outputs are larger (a language model's logits: positions x vocabulary each).
MAX_OUTPUT_VALUES = 2 ** 26


def agreement(reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> float:
    """How well ``outputs`` agree with ``reference`` (lists of output arrays): minus the
    mean KL divergence of their softmaxes where every output holds scores of two or more
    classes at every position (examples x positions x classes: a language model's
    logits; before, such outputs were compared by per-position top-1 agreement), else
    the mean top-1 agreement where every output is a vector of two or more scores, else
    minus the largest relative L2 error. Higher is better.

    >>> a = [np.array([[0.9, 0.1], [0.2, 0.8]])]
    >>> agreement(a, [np.array([[0.6, 0.4], [0.7, 0.3]])])
    0.5
    >>> logits = [np.log(np.array([[[0.5, 0.5]]]))]
    >>> round(agreement(logits, [np.log(np.array([[[0.9, 0.1]]]))]), 4)
    -0.5108
    """
    if all(r.ndim == 3 and r.shape[-1] > 1 for r in reference):
        # the divergence distillation minimises, one example at a time (a vocabulary's
        # temporaries stay small)
        return -float(np.mean([np.mean([np.mean(_kl_divergence(r[i], o[i]))
                                        for i in range(len(r))])
                               for r, o in zip(reference, outputs)]))
    if all(r.ndim >= 2 and r.shape[-1] > 1 for r in reference):
        return float(np.mean([np.mean(np.argmax(r, -1) == np.argmax(o, -1))
                              for r, o in zip(reference, outputs)]))
    return -max(float(np.linalg.norm(r - o) / max(np.linalg.norm(r), 1e-12))
                for r, o in zip(reference, outputs))


def _within_output_budget(stand_in: StandIn, x):
    """``x``, or its first examples, so that the model's outputs on them hold at most
    :data:`MAX_OUTPUT_VALUES` values (measured on one example)."""
    per_example = sum(int(np.size(o)) for o in stand_in.outputs(
        tf.nest.map_structure(lambda a: a[:1], x)))
    keep = max(1, MAX_OUTPUT_VALUES // max(per_example, 1))
    if keep >= n_examples(x):
        return x
    logger.info("candidates are compared on %d examples, not %d: each gives %d output "
                "values", keep, n_examples(x), per_example)
    return tf.nest.map_structure(lambda a: a[:keep], x)


def _kl_divergence(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """``KL(softmax(p) || softmax(q))`` over the last axis."""
    log_p = p_logits - _logsumexp(p_logits)
    log_q = q_logits - _logsumexp(q_logits)
    return np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)


def _logsumexp(a: np.ndarray) -> np.ndarray:
    top = a.max(axis=-1, keepdims=True)
    return top + np.log(np.sum(np.exp(a - top), axis=-1, keepdims=True))


def choose_candidate(graph: ModelGraph, plans: Sequence, data, *, batches: Optional[int] = None,
                     batch_size: int = 32, examples: int = DEFAULT_EXAMPLES,
                     progress: bool = False):
    """The plan of ``plans`` whose cut, after :func:`surgery.recalibrate_batchnorm` on
    ``batches`` batches of ``data``, agrees best with ``graph``'s model on the first ``examples``
    inputs of ``data``; ties go to the earlier plan. Each plan's ``settings`` gets
    ``candidate_score``; the winner's also ``candidate_scores`` (all of them, in order) and
    ``candidate`` (its index).

    No plan is cut: each is zeroed in turn on one copy of the model
    (:class:`~surgery.calibration.stand_in.StandIn`), recalibrated and run there, so a
    backend that compiles per shape (JAX) compiles once, not once per candidate. The score
    is the cut's, up to float round-off. The zeroed channels are exact zeros wherever they
    flow (their producers' kernel and bias slices are zero, and every BatchNormalization
    ``beta`` / ``moving_mean`` and depthwise bias on their way too), so they add exactly
    nothing to the channels kept, which therefore see the inputs they see in the cut model.
    In the training-mode pass of adaptive BN a zeroed channel has batch mean and variance
    0, so BN maps it to ``gamma * 0 / sqrt(eps) + beta = 0``: it stays zero, the kept
    channels' batch statistics (and so their re-estimated moving statistics) are the cut
    model's, and the zeroed channels' new statistics (mean 0, variance 0) map them to zero
    again in inference mode. Plans the zeroing cannot imitate exactly
    (:meth:`~surgery.calibration.stand_in.StandIn.fits`) are cut as before.

    Example::

        best = choose_candidate(graph, [plan_a, plan_b], (x_train, y_train))
    """
    stand_in = StandIn(graph)
    x = _within_output_budget(stand_in, first_inputs(data, examples))
    reference = stand_in.outputs(x)
    batches = batches or DEFAULT_BATCHES
    scores = []
    for p in tqdm(plans, desc="scoring candidate plans", unit="plan", leave=False,
                  disable=not bars_wanted(progress)):
        if stand_in.fits(p):
            with stand_in.zeroed(p):
                stand_in.recalibrate(data, batches, batch_size=batch_size)
                outputs = stand_in.outputs(x)
        else:
            cut = recalibrate_batchnorm(cut_graph(graph, p), data, batches,
                                        batch_size=batch_size)
            outputs = model_outputs(compiled_call(graph.with_model(cut), training=False), x)
        p.settings["candidate_score"] = round(agreement(reference, outputs), 6)
        scores.append(p.settings["candidate_score"])
        logger.info("candidate %d: agreement %.4f with the original", len(scores) - 1,
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
