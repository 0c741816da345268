"""The sparsity penalties as Keras 3 regularisers (TensorFlow, JAX or PyTorch backend), by
name: this module binds the Keras 3 classes ``GroupLasso``, ``AngularDissimilarity`` and
``CombinedRegularizer``.

They are :func:`surgery.pipeline.regularizers.regularizer_classes` of Keras 3: the
definitions, configs and formulas of :mod:`surgery.pipeline.regularizers`, subclassing
Keras 3's ``Regularizer`` and running on ``keras.ops``, so they differentiate on whichever
backend ``KERAS_BACKEND`` names. They are registered under the ``"surgery"`` package: a
``.keras`` file whose layers carry them reloads with ``keras.models.load_model`` once this
module (or :mod:`surgery.pipeline.regularizers`, in a Keras 3 process) is imported.
Importing this module imports Keras 3; ``add_penalties`` picks these classes for Keras 3
models by itself.

Example:
    >>> import numpy as np
    >>> round(float(GroupLasso(0.1, axis="filter")(np.ones((3, 3, 2, 4), "float32"))), 4)
    1.6971
"""
from __future__ import annotations

from surgery.pipeline.generation import keras3
from surgery.pipeline.regularizers import regularizer_classes

__all__ = ["GroupLasso", "AngularDissimilarity", "CombinedRegularizer"]

_CLASSES = regularizer_classes(keras3())
GroupLasso = _CLASSES.GroupLasso
AngularDissimilarity = _CLASSES.AngularDissimilarity
CombinedRegularizer = _CLASSES.CombinedRegularizer
