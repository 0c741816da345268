"""Sparsity penalties for sparse training: this module owns the regularisers that push whole
filters, input channels or BatchNormalization scales toward zero before channel surgery.

``GroupLasso`` (sum of L2 norms of kernel groups), ``AngularDissimilarity`` (penalty on
pairwise cosine similarity between filters) and ``CombinedRegularizer`` (a sum of several
regularisers, used when a layer carries more than one penalty) are ordinary Keras
regularisers with ``get_config`` round-trips, registered under the ``"surgery"`` package so
that a model carrying them saves to and loads from ``.h5`` once this module is imported.
``add_penalties`` returns a new model (cloned from its config, weights copied) with the
requested penalties attached to every Conv/Dense kernel, DepthwiseConv2D kernel and
BatchNormalization gamma; the input model is never modified.

Kernel layout conventions: convolution kernels are ``(kh, kw, in, out)``, Dense kernels
``(in, out)``, DepthwiseConv2D kernels ``(kh, kw, in, depth_multiplier)``. A *filter* is the
slice of the kernel that produces one output channel (last axis), an *input channel* slice
the one that reads one input channel (axis ``-2``).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

from surgery._backend import keras, require_tf_keras_model, tf
from surgery.engine.rules import rule_for

logger = logging.getLogger(__name__)

_EPS = 1e-12
_AXES = ("filter", "channel", "all")

__all__ = ["GroupLasso", "AngularDissimilarity", "CombinedRegularizer", "add_penalties"]


def _check_strength(strength: float, name: str) -> float:
    strength = float(strength)
    if not strength >= 0:  # also rejects NaN
        raise ValueError(f"{name}: strength must be >= 0, got {strength}")
    return strength


def _rows(x: tf.Tensor, axis: str) -> tf.Tensor:
    """Reshape a kernel to a matrix whose rows are the groups along ``axis``.

    ``"filter"`` -> one row per output channel (last axis); ``"channel"`` -> one row per
    input channel (axis -2, or axis 0 for a 1-D/2-D kernel).
    """
    rank = x.shape.rank
    if rank is None or rank < 1:
        return tf.reshape(x, [1, -1])
    if axis == "filter":
        perm = [rank - 1] + list(range(rank - 1))
    else:
        channel = rank - 2 if rank >= 2 else 0
        perm = [channel] + [i for i in range(rank) if i != channel]
    moved = tf.transpose(x, perm)
    return tf.reshape(moved, [tf.shape(moved)[0], -1])


def _group_norms(x: tf.Tensor, axis: str) -> tf.Tensor:
    """L2 norm of each row of ``_rows(x, axis)``, with a zero-safe gradient."""
    squares = tf.reduce_sum(tf.square(_rows(x, axis)), axis=1)
    return tf.sqrt(tf.maximum(squares, _EPS))


@keras.utils.register_keras_serializable(package="surgery")
class GroupLasso(keras.regularizers.Regularizer):
    """Group-lasso penalty: ``strength · Σ_g ||W_g||₂`` over groups of a kernel.

    Groups: ``axis="filter"`` – one group per output filter (last kernel axis), which drives
    whole filters to zero; ``"channel"`` – one group per input channel (axis ``-2``), which
    drives whole input channels to zero; ``"all"`` – the sum of both.

    Example:
        >>> import numpy as np
        >>> reg = GroupLasso(0.1, axis="filter")
        >>> w = np.ones((3, 3, 2, 4), "float32")          # 4 filters, each norm sqrt(18)
        >>> round(float(reg(w)), 4)                      # 0.1 * 4 * 4.2426
        1.6971
        >>> GroupLasso.from_config(reg.get_config()).axis
        'filter'
    """

    def __init__(self, strength: float = 1e-4, axis: str = "filter") -> None:
        if axis not in _AXES:
            raise ValueError(f"GroupLasso: axis must be one of {_AXES}, got {axis!r}")
        self.strength = _check_strength(strength, "GroupLasso")
        self.axis = axis

    def __call__(self, x) -> tf.Tensor:
        x = tf.convert_to_tensor(x)
        axes = ("filter", "channel") if self.axis == "all" else (self.axis,)
        total = tf.add_n([tf.reduce_sum(_group_norms(x, a)) for a in axes])
        return tf.cast(self.strength, x.dtype) * total

    def get_config(self) -> Dict[str, object]:
        return {"strength": self.strength, "axis": self.axis}


@keras.utils.register_keras_serializable(package="surgery")
class AngularDissimilarity(keras.regularizers.Regularizer):
    """Penalty on the pairwise cosine similarity of a layer's filters (or input channels).

    With ``w_1 … w_n`` the flattened filters (``axis="filter"``, one per output channel)
    or input-channel slices (``axis="channel"``) of the kernel::

        penalty = strength · Σ_{i<j} cos²(w_i, w_j),   cos(a, b) = a·b / (|a| |b|)

    It is zero when the groups are mutually orthogonal and grows when two groups point the
    same way, so redundant filters are pushed apart (or, together with a sparsity penalty,
    one of a redundant pair toward zero). All-zero groups contribute nothing.

    Example:
        >>> import numpy as np
        >>> reg = AngularDissimilarity(1.0, axis="filter")
        >>> float(reg(np.array([[1., 0.], [0., 1.]], "float32")))   # orthogonal
        0.0
        >>> float(reg(np.array([[1., 1.], [0., 0.]], "float32")))   # same direction
        1.0
    """

    def __init__(self, strength: float = 1e-4, axis: str = "filter") -> None:
        if axis not in ("filter", "channel"):
            raise ValueError(
                f"AngularDissimilarity: axis must be 'filter' or 'channel', got {axis!r}")
        self.strength = _check_strength(strength, "AngularDissimilarity")
        self.axis = axis

    def __call__(self, x) -> tf.Tensor:
        x = tf.convert_to_tensor(x)
        rows = _rows(x, self.axis)
        squares = tf.reduce_sum(tf.square(rows), axis=1, keepdims=True)
        unit = rows * tf.math.rsqrt(tf.maximum(squares, _EPS))
        cos = tf.matmul(unit, unit, transpose_b=True)
        diag = tf.linalg.diag_part(cos)
        pairs = (tf.reduce_sum(tf.square(cos)) - tf.reduce_sum(tf.square(diag))) / 2.0
        return tf.cast(self.strength, x.dtype) * pairs

    def get_config(self) -> Dict[str, object]:
        return {"strength": self.strength, "axis": self.axis}


@keras.utils.register_keras_serializable(package="surgery")
class CombinedRegularizer(keras.regularizers.Regularizer):
    """The sum of several regularisers (Keras allows one per weight).

    Example:
        >>> reg = CombinedRegularizer([keras.regularizers.L1(1e-4), GroupLasso(1e-3)])
        >>> len(CombinedRegularizer.from_config(reg.get_config()).regularizers)
        2
    """

    def __init__(self, regularizers: Sequence[object] = ()) -> None:
        self.regularizers: List[keras.regularizers.Regularizer] = [
            keras.regularizers.get(r) for r in regularizers]

    def __call__(self, x) -> tf.Tensor:
        x = tf.convert_to_tensor(x)
        if not self.regularizers:
            return tf.zeros((), x.dtype)
        return tf.add_n([tf.cast(r(x), x.dtype) for r in self.regularizers])

    def get_config(self) -> Dict[str, object]:
        return {"regularizers": [keras.regularizers.serialize(r) for r in self.regularizers]}


# tf-keras 2.21 writes .h5 model configs in the new serialization format (``module`` +
# ``registered_name`` "surgery>GroupLasso") but reads them back inside its legacy
# saved-model scope, which looks classes up by bare ``class_name`` only. Registering the bare
# names as well makes ``keras.models.load_model("x.h5")`` work once this module is imported.
for _cls in (GroupLasso, AngularDissimilarity, CombinedRegularizer):
    keras.utils.get_custom_objects().setdefault(_cls.__name__, _cls)


def _combine(existing, extra: List[object]):
    """``existing`` (may be None) plus the regularisers in ``extra``, as one regulariser."""
    parts = ([existing] if existing is not None else []) + extra
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return CombinedRegularizer(parts)


def _kernel_penalties(l1: float, l2: float, gl_filter: float, gl_channel: float,
                      gl_all: float, angular_filter: float, angular_channel: float,
                      depthwise: bool) -> List[object]:
    regs: List[object] = []
    if l1 or l2:
        regs.append(keras.regularizers.L1L2(l1=l1, l2=l2))
    if depthwise:
        # A depthwise kernel (kh, kw, C, mult) has one group per channel, along axis -2;
        # filter and channel groups coincide there, and angles between 3x3 spatial
        # stencils of different channels say nothing about redundancy, so no angular term.
        strength = gl_filter + gl_channel + gl_all
        if strength:
            regs.append(GroupLasso(strength, axis="channel"))
        return regs
    if gl_filter:
        regs.append(GroupLasso(gl_filter, axis="filter"))
    if gl_channel:
        regs.append(GroupLasso(gl_channel, axis="channel"))
    if gl_all:
        regs.append(GroupLasso(gl_all, axis="all"))
    if angular_filter:
        regs.append(AngularDissimilarity(angular_filter, axis="filter"))
    if angular_channel:
        regs.append(AngularDissimilarity(angular_channel, axis="channel"))
    return regs


def add_penalties(
    model: keras.Model,
    *,
    l1: float = 0.0,
    l2: float = 0.0,
    gl_filter: float = 0.0,
    gl_channel: float = 0.0,
    gl_all: float = 0.0,
    bn_l1: float = 0.0,
    angular_filter: float = 0.0,
    angular_channel: float = 0.0,
) -> keras.Model:
    """Return a NEW model with sparsity penalties on its kernels and BN scales (0 = off).

    The model is cloned from its config and the weights are copied; ``model`` itself is not
    touched and the clone is not compiled. Penalties are *added* to any regulariser a layer
    already has (e.g. the seed MobileNetV2's L1 1e-4 stays).

    Where they go:

    * ``Conv1D/2D/3D``, grouped Conv2D and ``Dense`` kernels: ``l1``/``l2`` (element-wise),
      ``gl_filter``/``gl_channel``/``gl_all`` (:class:`GroupLasso`),
      ``angular_filter``/``angular_channel`` (:class:`AngularDissimilarity`).
    * ``DepthwiseConv2D`` kernels: ``l1``/``l2`` and one per-channel group lasso whose
      strength is ``gl_filter + gl_channel + gl_all`` (there one group = one channel);
      no angular penalty.
    * ``BatchNormalization`` gamma: ``bn_l1`` as an L1 penalty (network slimming).
    * Other layers with a kernel (Conv2DTranspose, SeparableConv, recurrent) are left
      alone (logged). Which weight a layer's penalty goes on is its layer rule's ``penalty``.

    Example:
        >>> base = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3),
        ...                          keras.layers.BatchNormalization()])
        >>> sparse = add_penalties(base, gl_filter=1e-3, bn_l1=1e-4)
        >>> len(sparse.losses), len(base.losses)
        (2, 0)
    """
    require_tf_keras_model(model, "surgery.pipeline.regularizers.add_penalties")
    strengths = dict(l1=l1, l2=l2, gl_filter=gl_filter, gl_channel=gl_channel, gl_all=gl_all,
                     bn_l1=bn_l1, angular_filter=angular_filter,
                     angular_channel=angular_channel)
    for name, value in strengths.items():
        if not float(value) >= 0:
            raise ValueError(f"add_penalties: {name} must be >= 0, got {value}")
    kernel_args = {k: float(v) for k, v in strengths.items() if k != "bn_l1"}
    bn_l1 = float(bn_l1)

    def clone(layer):
        if isinstance(layer, keras.Model):
            return keras.models.clone_model(layer, clone_function=clone)
        config = layer.get_config()
        rule = rule_for(layer)
        target = rule.penalty if rule is not None else None
        if target == "depthwise":
            extra = _kernel_penalties(**kernel_args, depthwise=True)
            if extra:
                config["depthwise_regularizer"] = _combine(layer.depthwise_regularizer, extra)
        elif target == "kernel":
            extra = _kernel_penalties(**kernel_args, depthwise=False)
            if extra:
                config["kernel_regularizer"] = _combine(layer.kernel_regularizer, extra)
        elif target == "gamma" and bn_l1 and config.get("scale", True):
            config["gamma_regularizer"] = _combine(
                layer.gamma_regularizer, [keras.regularizers.L1(bn_l1)])
        elif rule is not None and rule.kernel_index is not None and any(kernel_args.values()):
            logger.info("add_penalties: %s (%s) left without penalties",
                        layer.name, type(layer).__name__)
        return layer.__class__.from_config(config)

    new = keras.models.clone_model(model, clone_function=clone)
    new.set_weights(model.get_weights())
    return new
