"""More than one device on Keras 3: ``--strategy`` by backend, each the way Keras documents it.

This module owns choosing and describing a Keras 3 run's distribution: on the TensorFlow
backend ``mirrored`` is a ``tf.distribute.MirroredStrategy`` (all GPUs, else all logical CPU
devices) under whose scope the models are built, compiled and fitted; on JAX ``dataparallel``
is ``keras.distribution.DataParallel`` over every device JAX sees, set globally before any
model is built (variables replicated, each batch split over the devices). PyTorch has no
Keras distribution API and is refused in one line saying what to do instead. The
``MirroredStrategy`` is built here for both generations; the other Keras 2 strategies
(``tf.distribute``) live in :mod:`surgery.pipeline.finetune`. It also owns what a Keras 3
data-parallel run does with partial batches (:func:`whole_batches`, :func:`padded_to_batches`).
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any, ContextManager, Optional

import numpy as np

from surgery._backend import tf
from surgery.errors import SurgeryError
from surgery.pipeline.generation import keras3

#: ``--strategy`` values a Keras 3 run takes, by backend
KERAS3_STRATEGIES = {"tensorflow": ("default", "mirrored"), "jax": ("default", "dataparallel"),
                     "torch": ("default",)}

__all__ = ["KERAS3_STRATEGIES", "make_keras3_strategy", "mirrored_strategy", "replicas",
           "scope", "whole_batches", "padded_to_batches"]


def make_keras3_strategy(name: str, backend: str) -> Optional[Any]:
    """The distribution ``name`` on Keras 3's ``backend``: ``None`` for ``default``, a
    ``tf.distribute.MirroredStrategy`` for ``mirrored`` (TensorFlow), or the
    ``keras.distribution.DataParallel`` it set globally for ``dataparallel`` (JAX).
    Anything else raises :class:`SurgeryError` with one line.

    Example:
        >>> make_keras3_strategy("default", "jax") is None
        True
        >>> make_keras3_strategy("mirrored", "torch")
        Traceback (most recent call last):
        ...
        surgery.errors.SurgeryError: --strategy mirrored: Keras 3's torch backend has no ...
    """
    if name == "default":
        return None
    if backend == "torch":
        raise SurgeryError(
            f"--strategy {name}: Keras 3's torch backend has no distribution API in Keras; "
            "run on one device (--strategy default), or use KERAS_BACKEND=jax with "
            "--strategy dataparallel, or KERAS_BACKEND=tensorflow with --strategy mirrored")
    allowed = KERAS3_STRATEGIES.get(backend, ("default",))
    if name not in allowed:
        other = "tensorflow" if name == "mirrored" else "jax"
        hint = (f"on Keras 3 it needs KERAS_BACKEND={other}" if name in ("mirrored",
                                                                         "dataparallel")
                else "it is a Keras 2 (tf-keras) strategy: run without --keras 3")
        raise SurgeryError(f"--strategy {name} is not available on Keras 3's {backend} "
                           f"backend ({', '.join(allowed)} are): {hint}")
    if name == "mirrored":
        return mirrored_strategy()
    distribution_api = keras3().keras.distribution
    distribution = distribution_api.DataParallel(devices=distribution_api.list_devices())
    distribution_api.set_distribution(distribution)
    return distribution


def _data_parallel() -> bool:
    keras = sys.modules.get("keras")  # no Keras 3 imported: no distribution set either
    distribution = getattr(keras, "distribution", None)
    return distribution is not None and distribution.distribution() is not None


def whole_batches(data: Any, batch_size: int) -> Any:
    """``(x, y)`` arrays cut to a whole number of ``batch_size`` batches while a
    ``keras.distribution`` is set (the last partial batch is dropped, as ``drop_remainder``
    does: JAX cannot split a batch the devices do not divide); anything else as it is.

    Example:
        >>> import numpy as np
        >>> whole_batches((np.zeros(10), np.zeros(10)), 4)[0].shape  # no distribution set
        (10,)
    """
    if not _data_parallel() or not isinstance(data, (tuple, list)) or len(data) != 2:
        return data
    keep = max(batch_size, len(data[0]) // batch_size * batch_size)
    return tuple(part[:keep] for part in data)


def padded_to_batches(x: np.ndarray, batch_size: int) -> np.ndarray:
    """``x`` padded (with copies of its last example) to a whole number of ``batch_size``
    batches while a ``keras.distribution`` is set, for ``predict``; drop the outputs past
    ``len(x)`` afterwards. Without a distribution, ``x`` itself.

    Example:
        >>> import numpy as np
        >>> padded_to_batches(np.zeros((5, 2)), 4).shape  # no distribution set
        (5, 2)
    """
    if not _data_parallel() or len(x) % batch_size == 0:
        return x
    extra = batch_size - len(x) % batch_size
    return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)])


def mirrored_strategy() -> tf.distribute.MirroredStrategy:
    """A ``tf.distribute.MirroredStrategy`` over all GPUs, else over all logical CPU devices
    (reducing on one device); both Keras generations' ``--strategy mirrored``."""
    if tf.config.list_logical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(
        devices=cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())


def replicas(strategy: Optional[Any]) -> int:
    """How many devices share each batch under ``strategy`` (1 without one).

    Example:
        >>> replicas(None)
        1
    """
    if strategy is None:
        return 1
    if hasattr(strategy, "num_replicas_in_sync"):
        return int(strategy.num_replicas_in_sync)
    return int(strategy.device_mesh.devices.size)  # keras.distribution.DataParallel


def scope(strategy: Optional[Any]) -> ContextManager:
    """The context to build, compile and fit models in: a ``tf.distribute`` strategy's
    scope; nothing for ``DataParallel`` (set globally) or no strategy."""
    if strategy is not None and hasattr(strategy, "scope"):
        return strategy.scope()
    return contextlib.nullcontext()
