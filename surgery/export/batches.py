"""Input data as the pipeline's exporters and evaluators need it.

This module owns the small helpers that turn ``(x, y)`` tuples or ``tf.data`` datasets
into numpy arrays (:func:`data_arrays`), labels into class ids (:func:`class_ids`), and
representative data into the single-example batches a TFLite converter calibrates on
(:func:`representative_examples`), plus the tqdm progress bar that long evaluations show.
:mod:`surgery.pipeline.export`, :mod:`surgery.export.tflite`,
:mod:`surgery.export.onnx` and :mod:`surgery.sensitivity` share them.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Optional, Union

import numpy as np
from tqdm.auto import tqdm

from surgery._backend import tf
from surgery.progress import bars_wanted

#: evaluations with more examples than this show a tqdm progress bar
PROGRESS_MIN_EXAMPLES = 300

RepresentativeData = Union[tf.data.Dataset, np.ndarray, Callable[[], Iterable[Any]]]
Data = Union[tuple, tf.data.Dataset]


def _first(element: Any) -> Any:
    """``x`` of an ``(x, y)`` / ``(x, y, w)`` element, or the element itself."""
    if isinstance(element, (tuple, list)):
        if not element:
            raise ValueError("representative_data yielded an empty tuple; expected x or (x, y)")
        return element[0]
    if isinstance(element, dict) and "x" in element:
        return element["x"]
    return element


def data_arrays(data: Data, limit: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` numpy arrays from an ``(x, y)`` tuple or a dataset of ``(x, y)`` batches.

    ``limit`` caps the number of examples.

    Example::

        x, y = data_arrays(splits.test)           # or data_arrays((x, y))
    """
    if isinstance(data, tf.data.Dataset):
        xs, ys, count = [], [], 0
        for element in data:
            if not isinstance(element, (tuple, list)) or len(element) < 2:
                raise ValueError("the dataset must yield (x, y) batches with labels y; got "
                                 f"elements of type {type(element).__name__}")
            xs.append(np.asarray(element[0]))
            ys.append(np.asarray(element[1]))
            count += len(xs[-1])
            if limit is not None and count >= limit:
                break
        if not xs:
            raise ValueError("the dataset is empty")
        x, y = np.concatenate(xs), np.concatenate(ys)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = np.asarray(data[0]), np.asarray(data[1])
        if len(x) != len(y):
            raise ValueError(f"x and y hold different numbers of examples: {len(x)} and "
                             f"{len(y)}")
    else:
        raise ValueError("data must be an (x, y) tuple of arrays or a tf.data.Dataset of "
                         f"(x, y) batches, got {type(data).__name__}")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x, y


def class_ids(y: np.ndarray) -> np.ndarray:
    """Integer class ids from one-hot (or probability) rows or from integer labels.

    >>> class_ids(np.eye(3)[[2, 0]])
    array([2, 0])
    >>> class_ids(np.array([[1], [3]]))
    array([1, 3])
    """
    y = np.asarray(y)
    if y.ndim >= 2 and y.shape[-1] > 1:
        return np.argmax(y, axis=-1).reshape(len(y))
    return y.reshape(len(y)).astype(np.int64)


def progress_bar(iterable: Iterable, total: int, enabled: bool, desc: str):
    return tqdm(iterable, total=total, desc=desc, unit="ex", leave=False,
                disable=not bars_wanted(enabled) or total <= PROGRESS_MIN_EXAMPLES)


def representative_examples(data: RepresentativeData, limit: int) -> Iterator[list]:
    """Single-example float32 batches ``[x[None]]`` for the converter's calibration."""
    if isinstance(getattr(data, "train", None), tf.data.Dataset):  # data_generator.Splits
        data = data.train
    if callable(data) and not isinstance(data, tf.data.Dataset):
        yielded = 0
        for element in data():
            if yielded >= limit:
                return
            x = _first(element)
            yield [np.asarray(x, np.float32)]
            yielded += 1
        return
    if isinstance(data, tf.data.Dataset):
        batches: Iterable[Any] = (_first(e) for e in data)
    else:
        batches = [_first(data) if isinstance(data, (tuple, list)) else data]
    yielded = 0
    for batch in batches:
        for example in np.asarray(batch, np.float32):
            if yielded >= limit:
                return
            yield [example[np.newaxis]]
            yielded += 1
    if yielded == 0:
        raise ValueError("representative_data holds no examples")


__all__ = ["data_arrays", "class_ids", "progress_bar", "representative_examples", "Data",
           "RepresentativeData", "PROGRESS_MIN_EXAMPLES"]
