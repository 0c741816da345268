"""Data handling of the data-driven criteria (``apoz``, ``taylor``, ``thinet``).

It owns the "needs data" error message and check, and :func:`_iter_batches`, which turns
``data=`` (an ``(x, y)`` tuple of arrays, ``y`` possibly ``None``, or a ``tf.data.Dataset``
of ``(x, y)`` batches) into ``(x, y)`` batches holding at most ``max_samples`` examples,
so that every criterion makes a single bounded pass (a symbolic tensor in ``data=`` is
refused); plus :func:`_reduce_to_channels`, which flattens an activation to
``(positions, channels)``.
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Optional

import numpy as np

from surgery._backend import tf
from surgery.pruning.criteria._registry import DEFAULT_BATCH_SIZE, DEFAULT_MAX_SAMPLES, Data
from surgery.errors import SurgeryError
from surgery.pruning.arguments import check_values

def _no_data_message(name: str) -> str:
    return (
        f"criterion {name!r} is data-driven and needs data=: pass data= as an (x, y) tuple "
        "of numpy arrays or a tf.data.Dataset of (x, y) batches (a few hundred examples "
        "are enough)"
    )


def _require_data(name: str, data: Optional[Data]) -> None:
    if data is None:
        raise SurgeryError(_no_data_message(name))


def _n_examples(x: Any) -> int:
    leaf = tf.nest.flatten(x)[0]
    return int(leaf.shape[0])


def _iter_batches(
    data: Data,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Iterator[tuple[Any, Any]]:
    """Yield ``(x, y)`` batches (``y`` may be ``None``) holding at most ``max_samples`` examples."""
    if max_samples is not None and max_samples <= 0:
        raise ValueError(f"max_samples must be positive, got {max_samples!r}")
    limit = math.inf if max_samples is None else int(max_samples)

    def split(element: Any) -> tuple[Any, Any]:
        if isinstance(element, (tuple, list)):
            if len(element) == 0:
                raise ValueError("data= holds an empty tuple; expected (x, y)")
            return element[0], (element[1] if len(element) > 1 else None)
        if isinstance(element, dict) and "x" in element:
            return element["x"], element.get("y")
        return element, None

    seen = 0
    if isinstance(data, tf.data.Dataset):
        for element in data:
            x, y = split(element)
            n = _n_examples(x)
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
        return
    x_all, y_all = split(data)
    check_values("channel_scores", "data", (x_all, y_all))
    total = min(_n_examples(x_all), limit)
    for start in range(0, int(total), int(batch_size)):
        stop = min(start + int(batch_size), int(total))
        x = tf.nest.map_structure(lambda a: a[start:stop], x_all)
        y = None if y_all is None else y_all[start:stop]
        yield x, y


def _reduce_to_channels(t: np.ndarray, axis: int) -> tuple[np.ndarray, int]:
    """Move the channel axis last and flatten the rest: ``(positions, channels)``."""
    t = np.moveaxis(np.asarray(t), axis, -1)
    return t.reshape(-1, t.shape[-1]), t.shape[-1]
