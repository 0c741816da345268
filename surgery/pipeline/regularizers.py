"""Sparsity penalties for sparse training: this module owns the regularisers that push whole
filters, input channels or BatchNormalization scales toward zero before channel surgery,
and where ``add_penalties`` attaches them, for both Keras generations.

``GroupLasso`` (sum of L2 norms of kernel groups), ``AngularDissimilarity`` (penalty on
pairwise cosine similarity between filters) and ``CombinedRegularizer`` (a sum of several
regularisers, used when a layer carries more than one penalty) are each defined once (the
``*Base`` classes: arguments, config, formula) and made into one Keras regulariser class
per generation by :func:`regularizer_classes`, which subclasses that generation's
``keras.regularizers.Regularizer``, runs the formula on its ``ops``
(:mod:`surgery.pipeline.generation`) and registers the class under the ``"surgery"``
package, so that a model carrying them saves and loads (``.h5``, ``.keras``) once this
module is imported. The names ``GroupLasso``, ``AngularDissimilarity`` and
``CombinedRegularizer`` here are the tf-keras (Keras 2) classes; the Keras 3 ones, with the
same names and configs, are bound in :mod:`surgery.pipeline.regularizers3` (importing this
module in a process that has Keras 3 loaded registers them too).
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
from types import ModuleType
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

from surgery._backend import keras
from surgery.engine.rules import rule_for
from surgery.errors import SurgeryError
from surgery.pipeline.generation import KerasGeneration, keras2, keras3, of_model

logger = logging.getLogger(__name__)

_EPS = 1e-12
_AXES = ("filter", "channel", "all")

__all__ = ["GroupLasso", "AngularDissimilarity", "CombinedRegularizer", "add_penalties",
           "group_lasso_penalty", "angular_penalty", "regularizer_classes",
           "RegularizerClasses"]


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


def group_lasso_penalty(x: Any, strength: float, axis: str, ops: Any = None) -> Any:
    """``strength · Σ_g ||x_g||₂`` over the groups of ``axis`` (see :class:`GroupLasso`),
    written against ``ops`` (a generation's :attr:`~surgery.pipeline.generation.
    KerasGeneration.ops`; default tf-keras's).

    Example:
        >>> import numpy as np
        >>> round(float(group_lasso_penalty(np.ones((2, 3), "float32"), 1.0, "filter")), 4)
        4.2426
    """
    ops = ops or keras2().ops
    axes = ("filter", "channel") if axis == "all" else (axis,)
    total = functools.reduce(operator.add, [ops.sum(_group_norms(x, a, ops)) for a in axes])
    return float(strength) * total


def angular_penalty(x: Any, strength: float, axis: str, ops: Any = None) -> Any:
    """``strength · Σ_{i<j} cos²(x_i, x_j)`` over the groups of ``axis`` (see
    :class:`AngularDissimilarity`), written against ``ops`` (default tf-keras's).

    Example:
        >>> import numpy as np
        >>> float(angular_penalty(np.array([[1., 1.], [0., 0.]], "float32"), 1.0, "filter"))
        1.0
    """
    ops = ops or keras2().ops
    rows = _rows(x, axis, ops)
    squares = ops.sum(ops.square(rows), axis=1, keepdims=True)
    unit = rows / ops.sqrt(ops.maximum(squares, _EPS))
    cos = ops.matmul(unit, ops.transpose(unit, (1, 0)))
    diag = ops.diagonal(cos)
    pairs = (ops.sum(ops.square(cos)) - ops.sum(ops.square(diag))) / 2.0
    return float(strength) * pairs


class _Penalty:
    """What every regulariser class shares: called on a weight, it runs its formula on the
    ``ops`` of its Keras generation (``_ops``, set by :func:`regularizer_classes`)."""

    _ops: Any = None
    _api: Optional[ModuleType] = None

    def penalty(self, x, ops):
        raise NotImplementedError

    def __call__(self, x):
        return self.penalty(x, self._ops)


class _GroupPenalty(_Penalty):
    """A strength-weighted formula over the groups of one kernel axis: the arguments, their
    checks and the config of :class:`GroupLassoBase` and :class:`AngularDissimilarityBase`."""

    axes: Sequence[str] = ()
    formula: Callable = None

    def __init__(self, strength: float = 1e-4, axis: str = "filter") -> None:
        name = type(self).__name__
        if axis not in self.axes:
            raise ValueError(f"{name}: axis must be one of {tuple(self.axes)}, got {axis!r}")
        self.strength = _check_strength(strength, name)
        self.axis = axis

    def penalty(self, x, ops):
        return type(self).formula(x, self.strength, self.axis, ops)

    def get_config(self) -> Dict[str, object]:
        return {"strength": self.strength, "axis": self.axis}


class GroupLassoBase(_GroupPenalty):
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

    axes = _AXES
    formula = staticmethod(group_lasso_penalty)


class AngularDissimilarityBase(_GroupPenalty):
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

    axes = ("filter", "channel")
    formula = staticmethod(angular_penalty)


class CombinedRegularizerBase(_Penalty):
    """The sum of several regularisers (Keras allows one per weight); the parts go through
    ``regularizers.get`` / ``serialize`` of the class's Keras (``_api``).

    Example:
        >>> reg = CombinedRegularizer([keras.regularizers.L1(1e-4), GroupLasso(1e-3)])
        >>> len(CombinedRegularizer.from_config(reg.get_config()).regularizers)
        2
    """

    def __init__(self, regularizers: Sequence[object] = ()) -> None:
        self.regularizers = [self._api.regularizers.get(r) for r in regularizers]

    def penalty(self, x, ops):
        if not self.regularizers:
            return 0.0 * ops.sum(x)
        total = functools.reduce(operator.add, [r(x) for r in self.regularizers])
        return ops.cast(total, x.dtype)

    def get_config(self) -> Dict[str, object]:
        return {"regularizers": [self._api.regularizers.serialize(r)
                                 for r in self.regularizers]}


class RegularizerClasses(NamedTuple):
    """One generation's regulariser classes, and its Keras module (``api``)."""

    GroupLasso: type
    AngularDissimilarity: type
    CombinedRegularizer: type
    api: ModuleType


#: the module that binds each generation's classes by name (Keras 3 records it in files)
_HOME = {2: __name__, 3: "surgery.pipeline.regularizers3"}


@functools.cache
def regularizer_classes(generation: KerasGeneration) -> RegularizerClasses:
    """The three regularisers as classes of ``generation``'s Keras, made once and registered
    as ``surgery>GroupLasso``, ``surgery>AngularDissimilarity`` and
    ``surgery>CombinedRegularizer``.

    Example:
        >>> regularizer_classes(keras2()).GroupLasso is GroupLasso
        True
    """
    api = generation.keras
    made: List[type] = []
    for base in (GroupLassoBase, AngularDissimilarityBase, CombinedRegularizerBase):
        name = base.__name__[:-len("Base")]
        cls = type(name, (base, api.regularizers.Regularizer), {
            "__module__": _HOME[generation.number], "_ops": generation.ops, "_api": api,
            "__doc__": f"{base.__doc__.splitlines()[0]} (Keras {generation.number}; see "
                       f":class:`surgery.pipeline.regularizers.{base.__name__}`)"})
        api.utils.register_keras_serializable(package="surgery")(cls)
        # tf-keras 2.21 writes .h5 model configs in the new format (``registered_name``
        # "surgery>GroupLasso") but reads them back in its legacy scope, which looks classes
        # up by bare ``class_name``; registering the bare names too makes those files load.
        api.utils.get_custom_objects().setdefault(name, cls)
        made.append(cls)
    return RegularizerClasses(*made, api=api)


_KERAS2_CLASSES = regularizer_classes(keras2())
GroupLasso = _KERAS2_CLASSES.GroupLasso
AngularDissimilarity = _KERAS2_CLASSES.AngularDissimilarity
CombinedRegularizer = _KERAS2_CLASSES.CombinedRegularizer


def _combine(existing, extra: List[object], classes: RegularizerClasses):
    """``existing`` (may be None) plus the regularisers in ``extra``, as one regulariser."""
    parts = ([existing] if existing is not None else []) + extra
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return classes.CombinedRegularizer(parts)


def _kernel_penalties(classes: RegularizerClasses, l1: float, l2: float, gl_filter: float,
                      gl_channel: float, gl_all: float, angular_filter: float,
                      angular_channel: float, depthwise: bool) -> List[object]:
    regs: List[object] = []
    if l1 or l2:
        regs.append(classes.api.regularizers.L1L2(l1=l1, l2=l2))
    if depthwise:
        # A depthwise kernel (kh, kw, C, mult) has one group per channel, along axis -2;
        # filter and channel groups coincide there, and angles between 3x3 spatial
        # stencils of different channels say nothing about redundancy, so no angular term.
        strength = gl_filter + gl_channel + gl_all
        if strength:
            regs.append(classes.GroupLasso(strength, axis="channel"))
        return regs
    if gl_filter:
        regs.append(classes.GroupLasso(gl_filter, axis="filter"))
    if gl_channel:
        regs.append(classes.GroupLasso(gl_channel, axis="channel"))
    if gl_all:
        regs.append(classes.GroupLasso(gl_all, axis="all"))
    if angular_filter:
        regs.append(classes.AngularDissimilarity(angular_filter, axis="filter"))
    if angular_channel:
        regs.append(classes.AngularDissimilarity(angular_channel, axis="channel"))
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
    the same generation and carries that generation's regularisers
    (:func:`regularizer_classes`; for Keras 3 those of :mod:`surgery.pipeline.regularizers3`).
    The model is cloned (``clone_model`` with a ``clone_function``) and the weights are
    copied; ``model`` itself is not touched and the clone is not compiled. Penalties are
    *added* to any regulariser a layer already has (e.g. the seed MobileNetV2's L1 1e-4
    stays).

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
    classes = regularizer_classes(of_model(model))
    strengths = dict(l1=l1, l2=l2, gl_filter=gl_filter, gl_channel=gl_channel, gl_all=gl_all,
                     bn_l1=bn_l1, angular_filter=angular_filter,
                     angular_channel=angular_channel)
    for name, value in strengths.items():
        if not float(value) >= 0:
            raise SurgeryError(f"add_penalties: {name} must be >= 0 (0 turns it off), "
                               f"got {value}")
    kernel_args = {k: float(v) for k, v in strengths.items() if k != "bn_l1"}

    def clone(layer):
        if isinstance(layer, classes.api.Model):
            return classes.api.models.clone_model(layer, clone_function=clone)
        return layer.__class__.from_config(
            _penalised_config(layer, classes, kernel_args, float(bn_l1)))

    new = classes.api.models.clone_model(model, clone_function=clone)
    new.set_weights(model.get_weights())
    return new


def _penalised_config(layer, classes: RegularizerClasses, kernel_args: Dict[str, float],
                      bn_l1: float) -> Dict[str, Any]:
    """``layer``'s config with the penalties added to the weight its rule names."""
    config = layer.get_config()
    rule = rule_for(layer)
    target = rule.penalty if rule is not None else None
    if target in ("depthwise", "kernel"):
        extra = _kernel_penalties(classes, **kernel_args, depthwise=target == "depthwise")
        if extra:
            key = f"{target}_regularizer"
            config[key] = _combine(getattr(layer, key), extra, classes)
    elif target == "gamma" and bn_l1 and config.get("scale", True):
        config["gamma_regularizer"] = _combine(
            layer.gamma_regularizer, [classes.api.regularizers.L1(bn_l1)], classes)
    elif rule is not None and rule.kernel_index is not None and any(kernel_args.values()):
        logger.info("add_penalties: %s (%s) left without penalties",
                    layer.name, type(layer).__name__)
    return config


if "keras" in sys.modules:  # Keras 3 is loaded: register its penalties for .keras files too
    regularizer_classes(keras3())
