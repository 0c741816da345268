"""The sparsity penalties as Keras 3 regularisers (TensorFlow, JAX or PyTorch backend): this
module owns the Keras 3 classes ``GroupLasso``, ``AngularDissimilarity`` and
``CombinedRegularizer``.

They have the names, arguments, configs and formulas of the tf-keras classes of
:mod:`surgery.pipeline.regularizers` (the shared ``*Base`` classes there hold the arguments
and the one formula, written against an ``ops`` namespace); here the formula runs on
``keras.ops``, so it differentiates on whichever backend ``KERAS_BACKEND`` names. They are
registered with ``keras.saving.register_keras_serializable(package="surgery")``: a
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

from types import SimpleNamespace

import keras
from keras import ops

from surgery.pipeline.regularizers import (AngularDissimilarityBase, CombinedRegularizerBase,
                                           GroupLassoBase)

__all__ = ["GroupLasso", "AngularDissimilarity", "CombinedRegularizer", "kit"]


@keras.saving.register_keras_serializable(package="surgery")
class GroupLasso(GroupLassoBase, keras.regularizers.Regularizer):
    """Keras 3 group lasso: ``strength · Σ_g ||W_g||₂`` over the filters (``axis="filter"``),
    input channels (``"channel"``) or both (``"all"``) of a kernel; see
    :class:`surgery.pipeline.regularizers.GroupLasso`.

    Example:
        >>> GroupLasso.from_config(GroupLasso(1e-3, "channel").get_config()).axis
        'channel'
    """

    def __call__(self, x):
        return self.penalty(x, ops)


@keras.saving.register_keras_serializable(package="surgery")
class AngularDissimilarity(AngularDissimilarityBase, keras.regularizers.Regularizer):
    """Keras 3 angular penalty: ``strength · Σ_{i<j} cos²(w_i, w_j)`` over a kernel's filters
    or input channels; see :class:`surgery.pipeline.regularizers.AngularDissimilarity`.

    Example:
        >>> import numpy as np
        >>> float(AngularDissimilarity(1.0)(np.array([[1., 1.], [0., 0.]], "float32")))
        1.0
    """

    def __call__(self, x):
        return self.penalty(x, ops)


@keras.saving.register_keras_serializable(package="surgery")
class CombinedRegularizer(CombinedRegularizerBase, keras.regularizers.Regularizer):
    """Keras 3 sum of several regularisers (Keras allows one per weight).

    Example:
        >>> reg = CombinedRegularizer([keras.regularizers.L1(1e-4), GroupLasso(1e-3)])
        >>> len(CombinedRegularizer.from_config(reg.get_config()).regularizers)
        2
    """

    _api = keras

    def __call__(self, x):
        return self.penalty(x, ops)


def kit() -> SimpleNamespace:
    """The Keras 3 classes and API ``add_penalties`` attaches to a Keras 3 model."""
    return SimpleNamespace(api=keras, GroupLasso=GroupLasso,
                           AngularDissimilarity=AngularDissimilarity,
                           CombinedRegularizer=CombinedRegularizer)
