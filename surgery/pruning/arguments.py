"""Checking what a user passes to the library, before any work is done.

This module owns the one error model of planning: every mistake a caller can make in
``surgery.plan``'s arguments raises :class:`~surgery.errors.SurgeryError` (a
``ValueError``) whose message names the argument and says how to fix it.
:func:`check_plan_arguments` checks the budget (``ratio``, ``threshold``, ``flops_target``,
``latency_target``, ``candidates``, ``round_to``, ``min_channels``, ``scope``), the
criterion and policy names, the ``ignore`` and ``per_layer`` layer names, and a
data-driven criterion called without ``data``; :func:`check_latency_arguments` the
runtime, batch size and threads of a latency target. (A model that is not a Keras model
is refused where it is resolved: :func:`surgery.engine.graph.resolve`.)
"""
from __future__ import annotations

import math
import numbers
from typing import Mapping, Optional, Sequence

from surgery.cost.runtimes import Runtime, get_runtime
from surgery.engine.graph import ModelGraph
from surgery.errors import SurgeryError
from surgery.pruning.criteria import CRITERIA
from surgery.pruning.criteria.units import UNIT_KINDS
from surgery.pruning.policies import POLICIES


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_fraction(name: str, value, *, low_open: bool = False, hint: str = "") -> None:
    """``value`` must be a number in ``[0, 1)`` (``(0, 1)`` with ``low_open``)."""
    low = "(0" if low_open else "[0"
    if not _is_number(value) or not math.isfinite(value) or value >= 1 or value < 0 or \
            (low_open and value == 0):
        raise SurgeryError(f"{name} must be in {low}, 1), got {value!r}"
                           + (f"; {hint}" if hint else ""))


def check_int(name: str, value, minimum: int, hint: str) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise SurgeryError(f"{name} must be an integer >= {minimum}, got {value!r}; {hint}")


def _layer_names(graph: ModelGraph) -> set:
    """The names of every layer of the graph's model, nested models' layers included."""
    names = set()
    for layer in graph.model.layers:
        names.add(layer.name)
        if graph.is_nested(layer):
            names |= _layer_names(graph.nested(layer))
    return names


#: what each unit switch of ``surgery.plan`` turns on, for messages
_UNIT_SWITCHES = dict(heads="attention layers lose whole heads",
                      head_dims="attention layers lose head widths",
                      depth="whole residual blocks are removed",
                      query_groups="grouped-query attention loses whole key/value groups",
                      units="heads, block widths and blocks are planned at all",
                      compensate="removed units' mean outputs are folded into biases",
                      exact="deletions may cross layers where only approximate")


def check_unit_arguments(data=None, **switches) -> None:
    """Refuse switches of ``surgery.plan`` (``heads``, ``head_dims``, ``depth``, ``units``,
    ``exact``, ``compensate``...) that are not booleans, and ``compensate`` without
    ``data``."""
    for name, value in switches.items():
        if not isinstance(value, bool):
            raise SurgeryError(f"{name} must be True or False (whether "
                               f"{_UNIT_SWITCHES[name]}), got {value!r}")
    if switches.get("compensate") and data is None:
        raise SurgeryError("plan(compensate=True) needs data= (calibration inputs, labels "
                           "not needed): the mean output of each removed unit is measured "
                           "on it")


def check_plan_arguments(graph: ModelGraph, *, ratio=None, criterion="l1",
                         policy: str = "aggregate", threshold=None,
                         per_layer: Optional[Mapping[str, float]] = None,
                         ignore: Sequence[str] = (), round_to=1, min_channels=1,
                         scope: str = "local", data=None, flops_target=None,
                         latency_target=None, candidates=1, params_target=None) -> None:
    """Raise :class:`SurgeryError` for the first mistake in ``surgery.plan``'s arguments.

    ``ratio`` is checked only when neither ``threshold`` nor a target decides the budget
    (they override it).

    Example::

        check_plan_arguments(graph, ratio=0.5, round_to=0)  # SurgeryError: round_to ...
    """
    _check_budget(ratio, threshold, candidates, dict(
        latency_target=latency_target, flops_target=flops_target, params_target=params_target))
    _check_round_to(round_to)
    check_int("min_channels", min_channels, 0, "it is the fewest channels a group keeps; "
              "use 1 (the default) or more")
    if scope not in ("local", "global"):
        raise SurgeryError(f"scope must be 'local' or 'global', got {scope!r}")
    _check_criterion(criterion, data)
    _check_candidate_data(candidates, data)
    if not isinstance(policy, str) or policy not in POLICIES:
        raise SurgeryError(f"unknown policy {policy!r}; known policies: "
                           f"{', '.join(sorted(POLICIES))} (pass one as policy=, or "
                           "register one with surgery.policies.register_policy)")
    _check_layers(graph, ignore, per_layer)


def _check_round_to(round_to) -> None:
    """``round_to``: an integer >= 1, or one per kind of unit."""
    hint = ("kept widths are multiples of it; use 1 for no rounding, 8 for hardware-friendly "
            "widths, or one per kind of unit: {%s}" % ", ".join(f"'{k}': 8" for k in UNIT_KINDS))
    if not isinstance(round_to, Mapping):
        check_int("round_to", round_to, 1, hint)
        return
    for kind, value in round_to.items():
        if kind not in UNIT_KINDS:
            raise SurgeryError(f"round_to: unknown kind of unit {kind!r}; {hint}")
        check_int(f"round_to[{kind!r}]", value, 1, hint)


#: what each target removes a fraction of, for messages
_TARGETS = dict(flops_target="FLOPs", latency_target="measured latency",
                params_target="parameters")


def _check_budget(ratio, threshold, candidates, targets: Mapping) -> None:
    """One budget: a ratio, a threshold, or one target (``targets``: name -> value)."""
    given = [name for name, value in targets.items() if value is not None]
    if len(given) > 1:
        both = "both" if len(given) == 2 else "all"
        raise SurgeryError(f"{' and '.join(given)} {both} set how much to prune; pass only one "
                           "of them (latency_target=0.5 removes half the measured latency, "
                           "flops_target=0.5 half the FLOPs, params_target=0.5 half the "
                           "parameters)")
    if given:
        name = given[0]
        check_fraction(name, targets[name], low_open=True,
                       hint=f"the fraction of {_TARGETS[name]} to remove, e.g. {name}=0.5")
        if threshold is not None:
            raise SurgeryError(f"{name} and threshold both set how much to prune; pass "
                               "only one of them")
    elif threshold is not None:
        if not _is_number(threshold) or not math.isfinite(threshold) or threshold < 0:
            raise SurgeryError(f"threshold must be a finite number >= 0 (channels scoring "
                               f"below it are deleted), got {threshold!r}; or pass ratio= "
                               "instead")
    else:
        check_fraction("ratio", ratio, hint="the fraction of channels to delete, e.g. "
                       "ratio=0.3 (or pass threshold= or flops_target=)")
    check_int("candidates", candidates, 1, "it is how many allocations of a budget are "
              "compared after adaptive BN; use 1 (the default) for the plain search")
    if candidates > 1 and not given:
        raise SurgeryError(f"candidates={candidates} compares allocations of a budget: pass "
                           "flops_target= or latency_target= (or params_target=) with it, or "
                           "candidates=1")


def _check_candidate_data(candidates, data) -> None:
    if candidates > 1 and data is None:
        raise SurgeryError(f"candidates={candidates} chooses between plans by their "
                           "accuracy after adaptive BN, which needs data=: pass training "
                           "examples (an (x, y) tuple of arrays or a tf.data.Dataset), or "
                           "candidates=1")


def _check_criterion(criterion, data) -> None:
    """A known criterion name or a callable, with ``data`` when it is data-driven."""
    if isinstance(criterion, str):
        if criterion not in CRITERIA:
            raise SurgeryError(f"unknown criterion {criterion!r}; known criteria: "
                               f"{', '.join(sorted(CRITERIA))} (pass one as criterion=, or a "
                               "callable, or register one with "
                               "surgery.pruning.criteria.register_criterion)")
        fn = CRITERIA[criterion]
    elif callable(criterion):
        fn = criterion
    else:
        raise SurgeryError(f"criterion must be a name ({', '.join(sorted(CRITERIA))}) or a "
                           f"callable, got {type(criterion).__name__}")
    if getattr(fn, "needs_data", False) and data is None:
        name = criterion if isinstance(criterion, str) else getattr(fn, "__name__", "criterion")
        raise SurgeryError(f"criterion={name!r} is data-driven and needs data=: pass an (x, y) "
                           "tuple of numpy arrays or a tf.data.Dataset of (x, y) batches (a "
                           "few hundred examples are enough), or use a weight criterion such "
                           "as 'l1'")


def _check_layers(graph: ModelGraph, ignore, per_layer) -> None:
    """``ignore`` and ``per_layer`` name layers of the model, with valid ratios."""
    if isinstance(ignore, str):
        raise SurgeryError(f"ignore must be a list of layer names, got the string "
                           f"{ignore!r}; write ignore=[{ignore!r}]")
    if per_layer is not None and not isinstance(per_layer, Mapping):
        raise SurgeryError(f"per_layer must be a dict {{layer name: ratio}}, got "
                           f"{type(per_layer).__name__}")
    names, model = _layer_names(graph), graph.model
    for arg, given in (("ignore", list(ignore or ())), ("per_layer", list(per_layer or {}))):
        unknown = [n for n in given if n not in names]
        if unknown:
            raise SurgeryError(f"{arg} names layers that model '{model.name}' does not have: "
                               f"{unknown}; use names from [l.name for l in model.layers]")
    for name, value in (per_layer or {}).items():
        check_fraction(f"per_layer[{name!r}]", value,
                       hint="the fraction of that group's channels to delete")


def check_latency_arguments(latency_target, runtime, batch_size, threads) -> Runtime:
    """:class:`SurgeryError` for a bad latency budget; returns the :class:`Runtime`."""
    check_fraction("latency_target", latency_target, low_open=True,
                   hint="the fraction of measured latency to remove, e.g. "
                        "latency_target=0.5 makes the model about twice as fast")
    check_int("batch_size", batch_size, 1, "the batch size you deploy with, e.g. 1 or 32")
    if threads is not None:
        check_int("threads", threads, 1, "the threads the runtime may use, or None for all "
                  "cores")
    return get_runtime(runtime)
