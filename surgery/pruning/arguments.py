"""Checking what a user passes to the library, before any work is done.

This module owns the one error model of the public API: every mistake a caller can make
in ``surgery.plan``, ``apply``, ``prune``, ``verify``, ``channel_groups``, ``count_flops``
or ``zero_channels`` raises :class:`~surgery.errors.SurgeryError` (a ``ValueError``) whose
message names the argument and says how to fix it. :func:`check_model` refuses ``None``
and path strings, :func:`check_plan_arguments` the planning budget (``ratio``,
``threshold``, ``flops_target``, ``round_to``, ``min_channels``, ``scope``), the criterion
and policy names, the ``ignore`` and ``per_layer`` layer names, and a data-driven
criterion called without ``data``.
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Mapping, Optional, Sequence

from surgery.errors import SurgeryError


def check_model(model, function: str = "surgery"):
    """The graph of ``model`` (a :class:`~surgery.engine.graph.ModelGraph`, resolved here
    at the public boundary and handed down); :class:`SurgeryError` unless it is a Keras
    model (tf-keras / Keras 2, or Keras 3 on any backend) or such a graph.

    Example::

        check_model("model.h5", "plan")  # SurgeryError: ... keras.models.load_model(...)
    """
    from surgery.engine.graph import resolve

    if model is None:
        raise SurgeryError(f"{function}(model=None): model must be a keras.Model; build one, or "
                           "load a saved one with keras.models.load_model(path)")
    if isinstance(model, (str, bytes, os.PathLike)):
        raise SurgeryError(
            f"{function}(model={os.fsdecode(model)!r}): model must be a keras.Model, not a "
            "path; load it first with keras.models.load_model(path, compile=False)")
    try:
        return resolve(model)
    except SurgeryError:
        raise SurgeryError(f"{function}(model=...): model must be a keras.Model, got "
                           f"{type(model).__name__}; build it (tf-keras or Keras 3) with the "
                           "Keras functional API or load it with keras.models.load_model(path)") from None



def check_values(function: str, argument: str, value) -> None:
    """:class:`SurgeryError` when ``value`` (an array or a nest of them) holds a symbolic
    tensor — a ``keras.Input`` or a layer output, of either Keras generation — where
    data is needed.

    Example::

        check_values("verify", "x", keras.Input((8,)))  # SurgeryError: ... NumPy array
    """
    from surgery._backend import tf

    for leaf in tf.nest.flatten(value):
        if type(leaf).__name__ == "KerasTensor" or "keras_tensor" in type(leaf).__module__:
            raise SurgeryError(
                f"{function}({argument}=...): got a symbolic tensor "
                f"({type(leaf).__module__}.{type(leaf).__name__}: a keras.Input or a layer "
                "output) where data is needed; pass a batch of values, e.g. a NumPy array "
                "like x_test[:8]")

def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_fraction(name: str, value, *, low_open: bool = False, hint: str = "") -> None:
    """``value`` must be a number in ``[0, 1)`` (``(0, 1)`` with ``low_open``)."""
    low = "(0" if low_open else "[0"
    if not _is_number(value) or not math.isfinite(value) or value >= 1 or value < 0 or \
            (low_open and value == 0):
        raise SurgeryError(f"{name} must be in {low}, 1), got {value!r}"
                           + (f"; {hint}" if hint else ""))


def _check_int(name: str, value, minimum: int, hint: str) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise SurgeryError(f"{name} must be an integer >= {minimum}, got {value!r}; {hint}")


def _layer_names(model) -> set:
    from surgery._backend import keras

    names = set()
    for layer in model.layers:
        names.add(layer.name)
        if isinstance(layer, keras.Model):
            names |= _layer_names(layer)
    return names


def check_unit_arguments(*, heads=True, head_dims=False) -> None:
    """Refuse ``heads`` / ``head_dims`` that are not booleans."""
    for name, value in (("heads", heads), ("head_dims", head_dims)):
        if not isinstance(value, bool):
            raise SurgeryError(f"{name} must be True or False (whether attention layers lose "
                               f"{'whole heads' if name == 'heads' else 'head widths'}), "
                               f"got {value!r}")


def check_plan_arguments(model, *, ratio=None, criterion="l1", policy: str = "aggregate",
                         threshold=None, per_layer: Optional[Mapping[str, float]] = None,
                         ignore: Sequence[str] = (), round_to=1, min_channels=1,
                         scope: str = "local", data=None, flops_target=None,
                         latency_target=None, candidates=1) -> None:
    """Raise :class:`SurgeryError` for the first mistake in ``surgery.plan``'s arguments.

    ``ratio`` is checked only when neither ``threshold`` nor ``flops_target`` decides the
    budget (they override it).

    Example::

        check_plan_arguments(model, ratio=0.5, round_to=0)  # SurgeryError: round_to ...
    """
    from surgery.pruning.criteria import CRITERIA
    from surgery.pruning.policies import POLICIES

    check_model(model, "plan")
    if latency_target is not None and flops_target is not None:
        raise SurgeryError("latency_target and flops_target both set how much to prune; pass "
                           "only one of them (latency_target=0.5 removes half the measured "
                           "latency, flops_target=0.5 half the FLOPs)")
    if flops_target is not None or latency_target is not None:
        name = "flops_target" if flops_target is not None else "latency_target"
        what = "FLOPs" if flops_target is not None else "measured latency"
        check_fraction(name, flops_target if flops_target is not None else latency_target,
                       low_open=True, hint=f"the fraction of {what} to remove, e.g. {name}=0.5")
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
    _check_int("candidates", candidates, 1, "it is how many allocations of a budget are "
               "compared after adaptive BN; use 1 (the default) for the plain search")
    if candidates > 1 and flops_target is None and latency_target is None:
        raise SurgeryError(f"candidates={candidates} compares allocations of a budget: pass "
                           "flops_target= or latency_target= with it, or candidates=1")
    _check_int("round_to", round_to, 1, "kept widths are multiples of it; use 1 for no "
               "rounding, or 8 for hardware-friendly widths")
    _check_int("min_channels", min_channels, 0, "it is the fewest channels a group keeps; "
               "use 1 (the default) or more")
    if scope not in ("local", "global"):
        raise SurgeryError(f"scope must be 'local' or 'global', got {scope!r}")
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
    if not isinstance(policy, str) or policy not in POLICIES:
        raise SurgeryError(f"unknown policy {policy!r}; known policies: "
                           f"{', '.join(sorted(POLICIES))} (pass one as policy=, or "
                           "register one with surgery.policies.register_policy)")
    if isinstance(ignore, str):
        raise SurgeryError(f"ignore must be a list of layer names, got the string "
                           f"{ignore!r}; write ignore=[{ignore!r}]")
    if per_layer is not None and not isinstance(per_layer, Mapping):
        raise SurgeryError(f"per_layer must be a dict {{layer name: ratio}}, got "
                           f"{type(per_layer).__name__}")
    names = _layer_names(model)
    for arg, given in (("ignore", list(ignore or ())), ("per_layer", list(per_layer or {}))):
        unknown = [n for n in given if n not in names]
        if unknown:
            raise SurgeryError(f"{arg} names layers that model '{model.name}' does not have: "
                               f"{unknown}; use names from [l.name for l in model.layers]")
    for name, value in (per_layer or {}).items():
        check_fraction(f"per_layer[{name!r}]", value,
                       hint="the fraction of that group's channels to delete")
