"""Examples for the steps that read data: criteria, candidate scoring, ``verify``.

This module owns turning ``data=`` (an ``(x, y)`` tuple of arrays, ``y`` possibly
``None``; the inputs alone; a list of batches; or a ``tf.data.Dataset`` of ``(x, y)``
batches) into bounded ``(x, y)`` batches
(:func:`iter_batches`), the first few inputs as one array (:func:`first_inputs`), and
refusing a symbolic tensor where values are needed (:func:`check_values`).
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Optional

import numpy as np

from surgery._backend import tf
from surgery.errors import SurgeryError

#: examples a data pass reads by default, and its batch size
DEFAULT_MAX_SAMPLES = 512
DEFAULT_BATCH_SIZE = 64


def check_values(function: str, argument: str, value) -> None:
    """:class:`SurgeryError` when ``value`` (an array or a nest of them) holds a symbolic
    tensor — a ``keras.Input`` or a layer output, of either Keras generation — where
    data is needed.

    Example::

        check_values("verify", "x", keras.Input((8,)))  # SurgeryError: ... NumPy array
    """
    for leaf in tf.nest.flatten(value):
        if type(leaf).__name__ == "KerasTensor" or "keras_tensor" in type(leaf).__module__:
            raise SurgeryError(
                f"{function}({argument}=...): got a symbolic tensor "
                f"({type(leaf).__module__}.{type(leaf).__name__}: a keras.Input or a layer "
                "output) where data is needed; pass a batch of values, e.g. a NumPy array "
                "like x_test[:8]")


def n_examples(x: Any) -> int:
    leaf = tf.nest.flatten(x)[0]
    return int(leaf.shape[0])


def iter_batches(
    data: Any,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Iterator[tuple[Any, Any]]:
    """Yield ``(x, y)`` batches (``y`` may be ``None``) holding at most ``max_samples``
    examples. ``data``: an ``(x, y)`` tuple, the inputs alone (an array, or a dict of
    arrays such as token batches), a ``tf.data.Dataset``, or a list of batches (each a
    dict of arrays or an ``(x, y)`` tuple).

    >>> import numpy as np
    >>> tokens = {"token_ids": np.zeros((3, 5), "int32")}
    >>> [b[0]["token_ids"].shape for b in iter_batches([tokens, tokens], max_samples=4)]
    [(3, 5), (1, 5)]
    """
    if max_samples is not None and max_samples <= 0:
        raise ValueError(f"max_samples must be positive, got {max_samples!r}")
    limit = math.inf if max_samples is None else int(max_samples)
    if isinstance(data, tf.data.Dataset) or isinstance(data, list) and data and all(
            isinstance(b, (dict, tuple)) for b in data):
        yield from _limited((_split(element) for element in data), limit)
        return
    x_all, y_all = _split(data)
    check_values("channel_scores", "data", (x_all, y_all))
    total = min(n_examples(x_all), limit)
    for start in range(0, int(total), int(batch_size)):
        stop = min(start + int(batch_size), int(total))
        x = tf.nest.map_structure(lambda a: a[start:stop], x_all)
        y = None if y_all is None else y_all[start:stop]
        yield x, y


def _split(element: Any) -> tuple[Any, Any]:
    """``(x, y)`` of one element of ``data``: a tuple or list, a dict with ``"x"``, or the
    inputs alone."""
    if isinstance(element, (tuple, list)):
        if len(element) == 0:
            raise ValueError("data= holds an empty tuple; expected (x, y)")
        return element[0], (element[1] if len(element) > 1 else None)
    if isinstance(element, dict) and "x" in element:
        return element["x"], element.get("y")
    return element, None


def _limited(batches, limit) -> Iterator[tuple[Any, Any]]:
    """``(x, y)`` batches until ``limit`` examples, the last one cut short."""
    seen = 0
    for x, y in batches:
        n = n_examples(x)
        if seen + n > limit:
            keep = int(limit - seen)
            x = tf.nest.map_structure(lambda a: a[:keep], x)
            y = None if y is None else y[:keep]
            n = keep
        if n > 0:
            yield x, y
        seen += n
        if seen >= limit:
            return


def first_inputs(data: Any, examples: int) -> Any:
    """The first ``examples`` inputs of ``data`` (arrays, ``(x, y)`` or batches) as one
    array, or one dict of arrays where the inputs are dicts (token batches).

    >>> tokens = {"token_ids": np.ones((3, 5), "int32"), "padding_mask": np.ones((3, 5))}
    >>> sorted((k, v.shape) for k, v in first_inputs([tokens, tokens], 4).items())
    [('padding_mask', (4, 5)), ('token_ids', (4, 5))]
    """
    parts = [tf.nest.map_structure(np.asarray, x)
             for x, _ in iter_batches(data, max_samples=examples,
                                      batch_size=min(examples, 256))]
    return tf.nest.map_structure(lambda *a: np.concatenate(a)[:examples], *parts)
