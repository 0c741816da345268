"""Sparsity penalties for sparse training: this module owns the regularisers that push whole
filters, input channels or BatchNormalization scales toward zero before channel surgery,
and where ``add_penalties`` attaches them, for both Keras generations.

``GroupLasso`` (sum of L2 norms of kernel groups), ``AngularDissimilarity`` (penalty on
pairwise cosine similarity between filters) and ``CombinedRegularizer`` (a sum of several
regularisers, used when a layer carries more than one penalty) are ordinary tf-keras
(Keras 2) regularisers with ``get_config`` round-trips, registered under the ``"surgery"``
package so that a model carrying them saves to and loads from ``.h5`` once this module is
imported. Their Keras 3 counterparts, with the same names, configs and formulas, live in
:mod:`surgery.pipeline.regularizers3` (registered with ``keras.saving`` so ``.keras`` files
reload; importing this module in a process that has Keras 3 loaded registers them too).
Each formula is written once against an ``ops`` namespace: ``keras.ops`` on Keras 3 (any
backend), :data:`surgery.pipeline.tf_ops.TF_OPS` on tf-keras.
``add_penalties`` returns a new model of the input's generation (cloned, weights copied)
with the requested penalties attached to every Conv/Dense kernel, DepthwiseConv2D kernel
and BatchNormalization gamma; the input model is never modified.

Kernel layout conventions: convolution kernels are ``(kh, kw, in, out)``, Dense kernels
``(in, out)``, DepthwiseConv2D kernels ``(kh, kw, in, depth_multiplier)``. A *filter* is the
slice of the kernel that produces one output channel (last axis), an *input channel* slice
the one that reads one input channel (axis ``-2``).
"""
from __future__ import annotations

import functools
import logging
import operator
import sys
from types import ModuleType, SimpleNamespace
from typing import Dict, List, Sequence

from surgery._backend import keras, tf
from surgery.engine.rules import rule_for
from surgery.errors import SurgeryError
from surgery.pipeline.tf_ops import TF_OPS

logger = logging.getLogger(__name__)

_EPS = 1e-12
_AXES = ("filter", "channel", "all")

__all__ = ["GroupLasso", "AngularDissimilarity", "CombinedRegularizer", "add_penalties",
           "group_lasso_penalty", "angular_penalty"]


def _check_strength(strength: float, name: str) -> float:
    strength = float(strength)
    if not strength >= 0:  # also rejects NaN
        raise ValueError(f"{name}: strength must be >= 0, got {strength}")
    return strength


def _rows(x, axis: str, ops):
    """Reshape a kernel to a matrix whose rows are the groups along ``axis``.

    ``"filter"`` -> one row per output channel (last axis); ``"channel"`` -> one row per
    input channel (axis -2, or axis 0 for a 1-D/2-D kernel). Kernels have static shapes.
    """
    shape = tuple(x.shape)
    rank = len(shape)
    if rank < 1:
        return ops.reshape(x, (1, -1))
    lead = rank - 1 if axis == "filter" else (rank - 2 if rank >= 2 else 0)
    perm = [lead] + [i for i in range(rank) if i != lead]
    moved = ops.transpose(x, perm)
    return ops.reshape(moved, (-1 if shape[lead] is None else int(shape[lead]), -1))


def _group_norms(x, axis: str, ops):
    """L2 norm of each row of ``_rows(x, axis)``, with a zero-safe gradient."""
    squares = ops.sum(ops.square(_rows(x, axis, ops)), axis=1)
    return ops.sqrt(ops.maximum(squares, _EPS))


def group_lasso_penalty(x, strength: float, axis: str, ops=TF_OPS):
    """``strength · Σ_g ||x_g||₂`` over the groups of ``axis`` (see :class:`GroupLasso`),
    written against ``ops`` (``keras.ops`` or :data:`TF_OPS`).

    Example:
        >>> import numpy as np
        >>> round(float(group_lasso_penalty(np.ones((2, 3), "float32"), 1.0, "filter")), 4)
        4.2426
    """
    x = ops.convert_to_tensor(x)
    axes = ("filter", "channel") if axis == "all" else (axis,)
    total = functools.reduce(operator.add, [ops.sum(_group_norms(x, a, ops)) for a in axes])
    return float(strength) * total


def angular_penalty(x, strength: float, axis: str, ops=TF_OPS):
    """``strength · Σ_{i<j} cos²(x_i, x_j)`` over the groups of ``axis`` (see
    :class:`AngularDissimilarity`), written against ``ops``.

    Example:
        >>> import numpy as np
        >>> float(angular_penalty(np.array([[1., 1.], [0., 0.]], "float32"), 1.0, "filter"))
        1.0
    """
    x = ops.convert_to_tensor(x)
    rows = _rows(x, axis, ops)
    squares = ops.sum(ops.square(rows), axis=1, keepdims=True)
    unit = rows * ops.rsqrt(ops.maximum(squares, _EPS))
    cos = ops.matmul(unit, ops.transpose(unit, (1, 0)))
    diag = ops.diagonal(cos)
    pairs = (ops.sum(ops.square(cos)) - ops.sum(ops.square(diag))) / 2.0
    return float(strength) * pairs


class GroupLassoBase:
    """Arguments, config and formula of the group-lasso regulariser, shared by the tf-keras
    class below and the Keras 3 class of :mod:`surgery.pipeline.regularizers3`."""

    def __init__(self, strength: float = 1e-4, axis: str = "filter") -> None:
        if axis not in _AXES:
            raise ValueError(f"GroupLasso: axis must be one of {_AXES}, got {axis!r}")
        self.strength = _check_strength(strength, "GroupLasso")
        self.axis = axis

    def penalty(self, x, ops):
        return group_lasso_penalty(x, self.strength, self.axis, ops)

    def get_config(self) -> Dict[str, object]:
        return {"strength": self.strength, "axis": self.axis}


class AngularDissimilarityBase:
    """Arguments, config and formula of the angular penalty, shared by both generations."""

    def __init__(self, strength: float = 1e-4, axis: str = "filter") -> None:
        if axis not in ("filter", "channel"):
            raise ValueError(
                f"AngularDissimilarity: axis must be 'filter' or 'channel', got {axis!r}")
        self.strength = _check_strength(strength, "AngularDissimilarity")
        self.axis = axis

    def penalty(self, x, ops):
        return angular_penalty(x, self.strength, self.axis, ops)

    def get_config(self) -> Dict[str, object]:
        return {"strength": self.strength, "axis": self.axis}


class CombinedRegularizerBase:
    """A sum of regularisers, shared by both generations; ``_api`` is the Keras module
    (tf-keras or Keras 3) whose ``regularizers.get`` / ``serialize`` the parts go through."""

    _api: ModuleType = keras

    def __init__(self, regularizers: Sequence[object] = ()) -> None:
        self.regularizers = [self._api.regularizers.get(r) for r in regularizers]

    def penalty(self, x, ops):
        x = ops.convert_to_tensor(x)
        if not self.regularizers:
            return 0.0 * ops.sum(x)
        return functools.reduce(operator.add, [r(x) for r in self.regularizers])

    def get_config(self) -> Dict[str, object]:
        return {"regularizers": [self._api.regularizers.serialize(r)
                                 for r in self.regularizers]}


@keras.utils.register_keras_serializable(package="surgery")
class GroupLasso(GroupLassoBase, keras.regularizers.Regularizer):
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

    def __call__(self, x) -> tf.Tensor:
        return self.penalty(x, TF_OPS)


@keras.utils.register_keras_serializable(package="surgery")
class AngularDissimilarity(AngularDissimilarityBase, keras.regularizers.Regularizer):
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

    def __call__(self, x) -> tf.Tensor:
        return self.penalty(x, TF_OPS)


@keras.utils.register_keras_serializable(package="surgery")
class CombinedRegularizer(CombinedRegularizerBase, keras.regularizers.Regularizer):
    """The sum of several regularisers (Keras allows one per weight).

    Example:
        >>> reg = CombinedRegularizer([keras.regularizers.L1(1e-4), GroupLasso(1e-3)])
        >>> len(CombinedRegularizer.from_config(reg.get_config()).regularizers)
        2
    """

    def __call__(self, x) -> tf.Tensor:
        x = tf.convert_to_tensor(x)
        return tf.cast(self.penalty(x, TF_OPS), x.dtype)


# tf-keras 2.21 writes .h5 model configs in the new serialization format (``module`` +
# ``registered_name`` "surgery>GroupLasso") but reads them back inside its legacy
# saved-model scope, which looks classes up by bare ``class_name`` only. Registering the bare
# names as well makes ``keras.models.load_model("x.h5")`` work once this module is imported.
for _cls in (GroupLasso, AngularDissimilarity, CombinedRegularizer):
    keras.utils.get_custom_objects().setdefault(_cls.__name__, _cls)


def _keras2_kit() -> SimpleNamespace:
    """The regulariser classes and Keras functions ``add_penalties`` uses on tf-keras."""
    return SimpleNamespace(api=keras, GroupLasso=GroupLasso,
                           AngularDissimilarity=AngularDissimilarity,
                           CombinedRegularizer=CombinedRegularizer)


def _kit_for(model) -> SimpleNamespace:
    """The kit of ``model``'s Keras generation (Keras 3 classes from ``regularizers3``)."""
    from surgery.engine.graph import resolve

    if resolve(model).keras3:
        from surgery.pipeline import regularizers3

        return regularizers3.kit()
    return _keras2_kit()


def _combine(existing, extra: List[object], kit: SimpleNamespace):
    """``existing`` (may be None) plus the regularisers in ``extra``, as one regulariser."""
    parts = ([existing] if existing is not None else []) + extra
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return kit.CombinedRegularizer(parts)


def _kernel_penalties(kit: SimpleNamespace, l1: float, l2: float, gl_filter: float,
                      gl_channel: float, gl_all: float, angular_filter: float,
                      angular_channel: float, depthwise: bool) -> List[object]:
    regs: List[object] = []
    if l1 or l2:
        regs.append(kit.api.regularizers.L1L2(l1=l1, l2=l2))
    if depthwise:
        # A depthwise kernel (kh, kw, C, mult) has one group per channel, along axis -2;
        # filter and channel groups coincide there, and angles between 3x3 spatial
        # stencils of different channels say nothing about redundancy, so no angular term.
        strength = gl_filter + gl_channel + gl_all
        if strength:
            regs.append(kit.GroupLasso(strength, axis="channel"))
        return regs
    if gl_filter:
        regs.append(kit.GroupLasso(gl_filter, axis="filter"))
    if gl_channel:
        regs.append(kit.GroupLasso(gl_channel, axis="channel"))
    if gl_all:
        regs.append(kit.GroupLasso(gl_all, axis="all"))
    if angular_filter:
        regs.append(kit.AngularDissimilarity(angular_filter, axis="filter"))
    if angular_channel:
        regs.append(kit.AngularDissimilarity(angular_channel, axis="channel"))
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

    ``model`` is a tf-keras (Keras 2) or a Keras 3 model (any backend); the result is of
    the same generation and carries that generation's regularisers (for Keras 3 those of
    :mod:`surgery.pipeline.regularizers3`). The model is cloned (``clone_model`` with a
    ``clone_function``) and the weights are copied; ``model`` itself is not
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
    kit = _kit_for(model)
    strengths = dict(l1=l1, l2=l2, gl_filter=gl_filter, gl_channel=gl_channel, gl_all=gl_all,
                     bn_l1=bn_l1, angular_filter=angular_filter,
                     angular_channel=angular_channel)
    for name, value in strengths.items():
        if not float(value) >= 0:
            raise SurgeryError(f"add_penalties: {name} must be >= 0 (0 turns it off), "
                               f"got {value}")
    kernel_args = {k: float(v) for k, v in strengths.items() if k != "bn_l1"}
    bn_l1 = float(bn_l1)

    def clone(layer):
        if isinstance(layer, kit.api.Model):
            return kit.api.models.clone_model(layer, clone_function=clone)
        config = layer.get_config()
        rule = rule_for(layer)
        target = rule.penalty if rule is not None else None
        if target == "depthwise":
            extra = _kernel_penalties(kit, **kernel_args, depthwise=True)
            if extra:
                config["depthwise_regularizer"] = _combine(layer.depthwise_regularizer, extra, kit)
        elif target == "kernel":
            extra = _kernel_penalties(kit, **kernel_args, depthwise=False)
            if extra:
                config["kernel_regularizer"] = _combine(layer.kernel_regularizer, extra, kit)
        elif target == "gamma" and bn_l1 and config.get("scale", True):
            config["gamma_regularizer"] = _combine(
                layer.gamma_regularizer, [kit.api.regularizers.L1(bn_l1)], kit)
        elif rule is not None and rule.kernel_index is not None and any(kernel_args.values()):
            logger.info("add_penalties: %s (%s) left without penalties",
                        layer.name, type(layer).__name__)
        return layer.__class__.from_config(config)

    new = kit.api.models.clone_model(model, clone_function=clone)
    new.set_weights(model.get_weights())
    return new


if "keras" in sys.modules:  # Keras 3 is loaded: register its penalties for .keras files too
    from surgery.pipeline import regularizers3 as _regularizers3  # noqa: E402,F401
