"""Which Keras generation a model or this process runs, and what the pipeline takes from it:
this module owns :class:`KerasGeneration`, the one adapter through which the pipeline's
training, fine-tuning, distillation, penalties and schedules are written once for both.

A generation gives its Keras module (``keras``: tf-keras for Keras 2, ``keras`` for Keras 3)
and its tensor functions (``ops``): ``keras.ops`` on Keras 3, whatever the backend; on
tf-keras, TensorFlow's own NumPy API (``tf.experimental.numpy``), whose functions carry the
NumPy names and signatures that ``keras.ops`` carries too, with ``cast`` (which NumPy lacks)
from ``tf.cast``. A formula written against ``ops`` (only NumPy-named functions, and
``cast``) therefore runs on both. Keras 3 is imported only when a Keras 3 model or process
asks for it (:func:`keras3`), so a Keras 2 process never loads it.

Example:
    >>> import numpy as np
    >>> g = of_process()
    >>> g.number, g.backend, float(g.ops.sum(g.ops.square(np.ones(3, "float32"))))
    (2, 'tensorflow', 3.0)
"""
from __future__ import annotations

import dataclasses
import functools
from types import ModuleType
from typing import Any

from surgery._backend import keras as tf_keras
from surgery._backend import legacy_tf_keras, tf
from surgery.engine.adapters import is_keras3

__all__ = ["KerasGeneration", "keras2", "keras3", "of_model", "of_process"]


class _TensorFlowNumPy:
    """``keras.ops``'s NumPy-named functions on TensorFlow (``tf.experimental.numpy``), and
    ``cast``, which is ``keras.ops.cast``'s ``tf.cast``."""

    cast = staticmethod(tf.cast)

    def __getattr__(self, name: str) -> Any:
        return getattr(tf.experimental.numpy, name)


@dataclasses.dataclass(frozen=True)
class KerasGeneration:
    """One Keras generation as the pipeline uses it (see the module docstring)."""

    number: int  # 2 (tf-keras) or 3
    keras: ModuleType
    ops: Any

    @property
    def keras3(self) -> bool:
        """Whether this is Keras 3 (any backend)."""
        return self.number == 3

    @property
    def backend(self) -> str:
        """``tensorflow`` for tf-keras; the backend Keras 3 was imported with."""
        return self.keras.backend.backend() if self.keras3 else "tensorflow"


_KERAS2 = KerasGeneration(2, tf_keras, _TensorFlowNumPy())


def keras2() -> KerasGeneration:
    """tf-keras (Keras 2) on TensorFlow."""
    return _KERAS2


@functools.cache
def keras3() -> KerasGeneration:
    """Keras 3, on the backend ``KERAS_BACKEND`` named when it was first imported."""
    import keras  # Keras 3, imported only when asked for: a Keras 2 process never loads it

    return KerasGeneration(3, keras, keras.ops)


def of_model(model) -> KerasGeneration:
    """The generation that built ``model`` (a tf-keras or Keras 3 model).

    Example:
        >>> of_model(tf_keras.Sequential([tf_keras.Input((2,))])).number
        2
    """
    return keras3() if is_keras3(model) else _KERAS2


def of_process() -> KerasGeneration:
    """The generation this process runs: Keras 3 when it imported Keras 3 before
    ``surgery`` (so ``tf.keras`` is not tf-keras), else tf-keras."""
    return _KERAS2 if legacy_tf_keras() else keras3()
