"""A ``keras.ops``-shaped namespace over TensorFlow, so that one formula serves both Keras
generations: this module owns the few tensor functions the pipeline's penalties and
learning-rate schedules and distillation loss need, under the names and signatures ``keras.ops`` (Keras 3) gives
them.

Code written against an ``ops`` argument runs on tf-keras (Keras 2) with ``ops=TF_OPS``
and on Keras 3 (TensorFlow, JAX or PyTorch backend) with ``ops=keras.ops``. Only the
functions listed here may be used in such formulas; each one behaves like its
``keras.ops`` namesake for the arguments the pipeline passes.

Example:
    >>> import numpy as np
    >>> float(TF_OPS.sum(TF_OPS.square(TF_OPS.convert_to_tensor(np.ones(3, "float32")))))
    3.0
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional, Sequence

from surgery._backend import tf


def _sum(x, axis: Optional[int] = None, keepdims: bool = False):
    return tf.reduce_sum(x, axis=axis, keepdims=keepdims)


def _transpose(x, axes: Optional[Sequence[int]] = None):
    return tf.transpose(x, perm=axes)


def _convert_to_tensor(x, dtype=None):
    return tf.convert_to_tensor(x, dtype=dtype)


TF_OPS = SimpleNamespace(
    convert_to_tensor=_convert_to_tensor,
    cast=tf.cast,
    reshape=tf.reshape,
    transpose=_transpose,
    sum=_sum,
    square=tf.square,
    sqrt=tf.sqrt,
    rsqrt=tf.math.rsqrt,
    maximum=tf.maximum,
    matmul=tf.matmul,
    diagonal=tf.linalg.diag_part,
    power=tf.pow,
    floor=tf.floor,
    where=tf.where,
    clip=tf.clip_by_value,
    log=tf.math.log,
)
"""The TensorFlow functions under their ``keras.ops`` names (see the module docstring)."""

__all__ = ["TF_OPS"]
