"""The criterion registry: the ``CRITERIA`` table, the ``Data`` and ``Criterion`` types,
the shared defaults and logger, and :func:`register_criterion` / :func:`get_criterion`.

It owns only the name -> function mapping and the contract every criterion follows
(``criterion(model, layer_names, data=None, **options) -> {layer_name: scores}``, one
float per output channel, higher = keep); it imports no criterion, so the criterion
modules and the package ``__init__`` can all import it without a cycle. Importing
:mod:`surgery.pruning.criteria` fills the table with the built-in criteria.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence, Union

import numpy as np

from surgery._backend import keras, tf
from surgery.errors import SurgeryError
from surgery.pruning.samples import DEFAULT_BATCH_SIZE, DEFAULT_MAX_SAMPLES  # noqa: F401

#: One logger for the whole package, named as the single module it replaced.
logger = logging.getLogger("surgery.pruning.criteria")

#: ``(x, y)`` numpy arrays (``y`` may be ``None`` for label-free criteria) or a
#: ``tf.data.Dataset`` of ``(x, y)`` batches.
Data = Union[tuple, tf.data.Dataset]
#: ``criterion(model, layer_names, data) -> {layer_name: scores}``; criteria may also take
#: keyword options (``max_samples=``, ``n_locations=`` ...) that ``channel_scores`` passes on.
Criterion = Callable[[keras.Model, Sequence[str], Optional[Data]], dict[str, np.ndarray]]
#: name -> criterion function; fill it with :func:`register_criterion`.
CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str, *, needs_data: bool = False) -> Callable[[Criterion], Criterion]:
    """Decorator that registers a criterion under ``name`` (re-registering replaces it).

    The function must accept ``(model, layer_names, data=None, **options)`` and return
    ``{layer_name: 1-D scores}``, one float per output channel, higher = keep.
    ``needs_data`` is recorded as ``fn.needs_data`` so callers can check it up front.

    >>> import numpy as np
    >>> from surgery.pruning.criteria import register_criterion, CRITERIA
    >>> @register_criterion("ones")
    ... def ones(model, layer_names, data=None, **options):
    ...     return {n: np.ones(model.get_layer(n).output_shape[-1]) for n in layer_names}
    >>> CRITERIA["ones"] is ones
    True
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_criterion needs a non-empty name string, got {name!r}")

    def decorate(fn: Criterion) -> Criterion:
        if not callable(fn):
            raise TypeError(f"criterion {name!r} must be callable, got {type(fn).__name__}")
        try:
            fn.needs_data = needs_data  # type: ignore[attr-defined]
        except (AttributeError, TypeError):  # e.g. a bound method or builtin
            pass
        if name in CRITERIA and CRITERIA[name] is not fn:
            logger.debug("criterion %r re-registered; the new function replaces the old", name)
        CRITERIA[name] = fn
        return fn

    return decorate


def get_criterion(name_or_fn: Union[str, Criterion]) -> Criterion:
    """Return the criterion registered as ``name_or_fn``, or the callable itself.

    >>> from surgery.pruning.criteria import get_criterion
    >>> get_criterion("l1").__name__
    'l1'
    >>> get_criterion("nope")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    surgery.errors.SurgeryError: unknown criterion 'nope'; known criteria: ...
    """
    if callable(name_or_fn):
        return name_or_fn
    if isinstance(name_or_fn, str) and name_or_fn in CRITERIA:
        return CRITERIA[name_or_fn]
    raise SurgeryError(
        f"unknown criterion {name_or_fn!r}; known criteria: {', '.join(sorted(CRITERIA))} "
        "(or pass a callable, or register one with surgery.pruning.criteria.register_criterion)"
    )
