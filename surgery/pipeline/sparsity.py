"""Weight sparsity: this module owns driving individual kernel weights to exactly zero.

Two families. (a) Sparse training with tfmot: :func:`prune_low_magnitude_model` wraps every
layer tfmot can prune in ``PruneLowMagnitude`` (constant or polynomial schedule, or tfmot's
structured m:n sparsity such as 2:4), :func:`pruning_callbacks` gives the callbacks training
needs, and :func:`strip` removes the wrappers so the result saves as a plain ``.h5``.
(b) One-shot unstructured magnitude pruning (PaddleSlim style): :func:`prune_unstructured`
zeroes kernel weights below a threshold or the smallest fraction per layer or globally and
returns the keep-masks, :class:`MaskCallback` re-applies them after every training batch so
fine-tuning keeps the zeros, and :func:`total_sparsity` measures the zero fraction of the
prunable kernels. Input models are never modified: every function that changes weights
works on a clone.

A *prunable kernel* is one per layer, the weight its layer rule names (``kernel_index``):
``depthwise_kernel`` of DepthwiseConv2D, ``pointwise_kernel`` of SeparableConv, otherwise
``kernel`` (Conv*, Dense, recurrent layers). Biases,
BatchNormalization and embeddings are never pruned. Layers inside nested models count, and
tfmot-wrapped layers are measured through their wrapper.
"""
from __future__ import annotations

import importlib.util
import logging
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from surgery._backend import (  # noqa: F401  (first: selects the Keras 2 API)
    keras, require_legacy_tf_keras, require_tf_keras_model, tf,
)
from surgery.engine.rules import rule_for

logger = logging.getLogger(__name__)

__all__ = ["prune_low_magnitude_model", "pruning_callbacks", "strip", "prune_unstructured",
           "total_sparsity", "MaskCallback", "prunable_kernels", "tfmot_prunable"]



def _tfmot(what: str):
    """tfmot's Keras pruning API and its layer registry modules, imported on first use:
    tfmot works only where ``tf.keras`` is Keras 2, so ``what`` is refused elsewhere."""
    require_legacy_tf_keras(f"surgery.pipeline.sparsity.{what} (tfmot sparse training)")
    # tfmot is heavy and Keras-2-only: imported on the first call that needs it.
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.sparsity.keras import (
        prunable_layer, prune_registry,
    )

    return tfmot.sparsity.keras, prunable_layer, prune_registry


def _require_tf_keras_model(model, what: str) -> None:
    require_tf_keras_model(model, f"surgery.pipeline.sparsity.{what} (tfmot and the weight "
                                  "masks are Keras 2 code)")


# --------------------------------------------------------------------------- helpers


def _copy(model: keras.Model) -> keras.Model:
    """A private clone of ``model`` with its weights (never shares variables with it)."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def _iter_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """Every layer of ``model``, descending into nested models, in model order."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _iter_layers(layer)
        else:
            yield layer


def _kernel_of(layer: keras.layers.Layer) -> Optional[tf.Variable]:
    """The prunable kernel of ``layer`` (its rule's ``kernel_index``), or None."""
    if isinstance(layer, keras.layers.Wrapper) and hasattr(layer, "pruning_vars"):
        layer = layer.layer  # tfmot PruneLowMagnitude
    rule = rule_for(layer)
    if rule is None or rule.kernel_index is None or len(layer.weights) <= rule.kernel_index:
        return None
    return layer.weights[rule.kernel_index]


def _layer_name(layer: keras.layers.Layer) -> str:
    if isinstance(layer, keras.layers.Wrapper) and hasattr(layer, "pruning_vars"):
        return layer.layer.name
    return layer.name


def prunable_kernels(model: keras.Model) -> Dict[str, tf.Variable]:
    """Map each layer name of ``model`` to its prunable kernel variable.

    Example:
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
        >>> list(prunable_kernels(m))
        ['d']
    """
    _require_tf_keras_model(model, "prunable_kernels")
    kernels: Dict[str, tf.Variable] = {}
    for layer in _iter_layers(model):
        var = _kernel_of(layer)
        if var is not None:
            kernels[_layer_name(layer)] = var
    return kernels


def tfmot_prunable(layer: keras.layers.Layer) -> bool:
    """True when tfmot would prune some weight of ``layer`` (DepthwiseConv2D: False).

    Example:
        >>> tfmot_prunable(keras.layers.Dense(3)), tfmot_prunable(keras.layers.ReLU())
        (True, False)
    """
    _, prunable_layer, prune_registry = _tfmot("tfmot_prunable")
    if isinstance(layer, prunable_layer.PrunableLayer) or hasattr(layer, "get_prunable_weights"):
        return True
    registry = prune_registry.PruneRegistry
    names = registry._LAYERS_WEIGHTS_MAP.get(layer.__class__)  # noqa: SLF001
    if names is not None:
        return bool(names)
    return registry.supports(layer)


# --------------------------------------------------------------------------- tfmot


def _dividing_frequency(span: int, frequency: int) -> int:
    """The largest divisor of ``span`` that is <= ``frequency`` (>= 1)."""
    for f in range(min(frequency, span), 0, -1):
        if span % f == 0:
            return f
    return 1


def _pruning_schedule(plm, schedule: str, target_sparsity: float, begin_step: int,
                      end_step: Optional[int], frequency: int):
    """tfmot's ``ConstantSparsity`` or ``PolynomialDecay`` as
    :func:`prune_low_magnitude_model` describes them (``plm``: tfmot's Keras pruning API)."""
    if schedule == "constant":
        end = -1 if end_step is None else int(end_step)
        if end != -1 and end < begin_step:
            raise ValueError(f"end_step ({end}) must be >= begin_step ({begin_step})")
        return plm.ConstantSparsity(target_sparsity, begin_step, end, frequency)
    if schedule == "polynomial":
        if end_step is None or int(end_step) <= begin_step:
            raise ValueError("schedule 'polynomial' needs end_step > begin_step, got "
                             f"begin_step={begin_step}, end_step={end_step}")
        end = int(end_step)
        effective = _dividing_frequency(end - begin_step, frequency)
        if effective != frequency:
            logger.info("pruning frequency %d -> %d so that step %d is a pruning step",
                        frequency, effective, end)
        return plm.PolynomialDecay(0.0, target_sparsity, begin_step, end, frequency=effective)
    raise ValueError(f"schedule must be 'constant' or 'polynomial', got {schedule!r}")


def prune_low_magnitude_model(
    model: keras.Model,
    schedule: str = "constant",
    target_sparsity: float = 0.5,
    begin_step: int = 0,
    end_step: Optional[int] = None,
    frequency: int = 100,
    m_by_n: Optional[Sequence[int]] = None,
) -> keras.Model:
    """Return a clone of ``model`` whose tfmot-prunable layers are wrapped for pruning.

    Args:
        model: a functional or Sequential model (not modified).
        schedule: ``"constant"`` (``ConstantSparsity``: ``target_sparsity`` from
            ``begin_step`` on, re-pruned every ``frequency`` steps until ``end_step``,
            default forever) or ``"polynomial"`` (``PolynomialDecay`` from 0 to
            ``target_sparsity`` between ``begin_step`` and ``end_step``, which is required).
            For ``"polynomial"`` the frequency is lowered to a divisor of
            ``end_step - begin_step`` so that the last update lands exactly on ``end_step``
            and the target is reached (tfmot only prunes on multiples of the frequency).
        target_sparsity: fraction of each wrapped kernel set to zero, in [0, 1).
        begin_step, end_step, frequency: in optimizer steps (batches).
        m_by_n: e.g. ``(2, 4)``: tfmot's structured sparsity (2 zeros in every 4
            consecutive input-channel weights); tfmot then ignores the schedule's sparsity
            and computes the masks once, at training step 1, so train >= 2 batches.

    Layers tfmot cannot prune (DepthwiseConv2D, BatchNormalization, activations, …) are
    left unwrapped. The result is not compiled; train it with :func:`pruning_callbacks`
    and save ``strip(model)``.

    Example:
        >>> base = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> wrapped = prune_low_magnitude_model(base, target_sparsity=0.5)
        >>> type(wrapped.layers[0]).__name__
        'PruneLowMagnitude'
    """
    _require_tf_keras_model(model, "prune_low_magnitude_model")
    plm = _tfmot("prune_low_magnitude_model")[0]
    target_sparsity = float(target_sparsity)
    if not 0.0 <= target_sparsity < 1.0:
        raise ValueError(f"target_sparsity must be in [0, 1), got {target_sparsity}")
    begin_step, frequency = int(begin_step), int(frequency)
    if begin_step < 0 or frequency < 1:
        raise ValueError(f"need begin_step >= 0 and frequency >= 1, got {begin_step}, "
                         f"{frequency}")
    pruning_schedule = _pruning_schedule(plm, schedule, target_sparsity, begin_step, end_step,
                                         frequency)
    params = {"pruning_schedule": pruning_schedule}
    if m_by_n is not None:
        m, n = (int(v) for v in m_by_n)
        if not 0 < m < n:
            raise ValueError(f"m_by_n must be (m, n) with 0 < m < n, got {tuple(m_by_n)}")
        params["sparsity_m_by_n"] = (m, n)

    copy = _copy(model)  # the wrappers share the copy's variables, never the input's
    wrapped: List[str] = []

    def wrap(layer):
        if isinstance(layer, keras.Model):
            return keras.models.clone_model(layer, clone_function=wrap)
        if tfmot_prunable(layer):
            wrapped.append(layer.name)
            return plm.prune_low_magnitude(layer, **params)
        return layer

    result = keras.models.clone_model(copy, clone_function=wrap)
    logger.info("tfmot wraps %d layers: %s", len(wrapped), ", ".join(wrapped))
    return result


def pruning_callbacks(log_dir: Optional[str] = None) -> List[keras.callbacks.Callback]:
    """``[UpdatePruningStep()]`` plus ``PruningSummaries(log_dir)`` when ``log_dir`` is given.

    ``PruningSummaries`` is itself a TensorBoard callback (it writes the usual TensorBoard
    logs and, under ``log_dir/metrics``, each layer's sparsity and threshold), so do not add
    a second TensorBoard callback on the same folder. It needs the ``tensorboard`` package;
    without it the summaries are left out (with a logged warning) rather than crashing
    training.

    Example:
        >>> [type(c).__name__ for c in pruning_callbacks()]
        ['UpdatePruningStep']
        >>> [type(c).__name__ for c in pruning_callbacks("/tmp/logs")]  # doctest: +SKIP
        ['UpdatePruningStep', 'PruningSummaries']
    """
    plm = _tfmot("pruning_callbacks")[0]
    callbacks: List[keras.callbacks.Callback] = [plm.UpdatePruningStep()]
    if log_dir:
        if importlib.util.find_spec("tensorboard") is None:
            # TensorFlow 2.21 no longer pulls in tensorboard; without it every summary
            # write raises TBNotInstalledError in the middle of fit().
            logger.warning("tensorboard is not installed: no PruningSummaries in %s "
                           "(pip install tensorboard)", log_dir)
        else:
            callbacks.append(plm.PruningSummaries(log_dir=str(log_dir)))
    return callbacks


def strip(model: keras.Model) -> keras.Model:
    """Remove the pruning wrappers (``tfmot.sparsity.keras.strip_pruning``).

    The stripped model holds the sparse kernels, loads with plain
    ``keras.models.load_model`` and is not compiled.

    Example:
        >>> base = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> type(strip(prune_low_magnitude_model(base)).layers[0]).__name__
        'Dense'
    """
    _require_tf_keras_model(model, "strip")
    return _tfmot("strip")[0].strip_pruning(model)


# --------------------------------------------------------------------------- unstructured


def prune_unstructured(
    model: keras.Model,
    *,
    threshold: Optional[float] = None,
    ratio: Optional[float] = None,
    scope: str = "layer",
) -> Tuple[keras.Model, Dict[str, np.ndarray]]:
    """Zero small kernel weights in a clone of ``model``; return ``(clone, masks)``.

    Give exactly one of ``threshold`` (zero every prunable-kernel weight with
    ``|w| < threshold``; ``scope`` does not matter) or ``ratio`` (zero the
    ``round(ratio · n)`` smallest-magnitude weights of each kernel with ``scope="layer"``,
    or of all prunable kernels pooled with ``scope="global"``; ties broken by position).
    ``masks`` maps each layer name to a boolean array of its kernel's shape, ``True`` =
    kept; pass it to :class:`MaskCallback` to keep the zeros while fine-tuning. The clone is
    not compiled.

    Example:
        >>> import numpy as np
        >>> base = keras.Sequential([keras.Input((10,)), keras.layers.Dense(10, name="d")])
        >>> pruned, masks = prune_unstructured(base, ratio=0.3)
        >>> float((pruned.get_layer("d").kernel.numpy() == 0).mean())
        0.3
        >>> round(total_sparsity(pruned)[0], 2)
        0.3
    """
    _require_tf_keras_model(model, "prune_unstructured")
    if (threshold is None) == (ratio is None):
        raise ValueError("prune_unstructured: give exactly one of threshold= or ratio=")
    if scope not in ("layer", "global"):
        raise ValueError(f"prune_unstructured: scope must be 'layer' or 'global', got {scope!r}")
    if threshold is not None and not float(threshold) >= 0:
        raise ValueError(f"prune_unstructured: threshold must be >= 0, got {threshold}")
    if ratio is not None and not 0.0 <= float(ratio) <= 1.0:
        raise ValueError(f"prune_unstructured: ratio must be in [0, 1], got {ratio}")

    clone = _copy(model)
    kernels = prunable_kernels(clone)
    if not kernels:
        raise ValueError(f"prune_unstructured: model {model.name!r} has no prunable kernels "
                         "(Conv/Dense/DepthwiseConv2D)")
    values = {name: var.numpy() for name, var in kernels.items()}
    masks: Dict[str, np.ndarray] = {}
    if threshold is not None:
        for name, w in values.items():
            masks[name] = np.abs(w) >= float(threshold)
    elif scope == "layer":
        for name, w in values.items():
            masks[name] = _smallest_off(np.abs(w).ravel(), float(ratio)).reshape(w.shape)
    else:
        flat = np.concatenate([np.abs(w).ravel() for w in values.values()])
        keep = _smallest_off(flat, float(ratio))
        start = 0
        for name, w in values.items():
            masks[name] = keep[start:start + w.size].reshape(w.shape)
            start += w.size
    for name, var in kernels.items():
        var.assign(values[name] * masks[name].astype(values[name].dtype))
    logger.info("unstructured pruning: total sparsity %.4f", total_sparsity(clone)[0])
    return clone, masks


def _smallest_off(magnitudes: np.ndarray, ratio: float) -> np.ndarray:
    """Boolean keep-mask that drops the ``round(ratio · n)`` smallest entries."""
    keep = np.ones(magnitudes.shape, dtype=bool)
    k = int(round(ratio * magnitudes.size))
    if k:
        keep[np.argsort(magnitudes, kind="stable")[:k]] = False
    return keep


def total_sparsity(model: keras.Model) -> Tuple[float, Dict[str, float]]:
    """Fraction of exactly-zero weights over all prunable kernels, and per layer.

    Returns ``(total, {layer_name: fraction})``; the total is weighted by kernel size.

    Example:
        >>> m = keras.Sequential([keras.Input((2,)),
        ...                       keras.layers.Dense(2, kernel_initializer="zeros", name="d")])
        >>> total_sparsity(m)
        (1.0, {'d': 1.0})
    """
    _require_tf_keras_model(model, "total_sparsity")
    per_layer: Dict[str, float] = {}
    zeros = count = 0
    for name, var in prunable_kernels(model).items():
        w = var.numpy()
        z = int(np.count_nonzero(w == 0))
        per_layer[name] = z / w.size if w.size else 0.0
        zeros += z
        count += w.size
    return (zeros / count if count else 0.0), per_layer


class MaskCallback(keras.callbacks.Callback):
    """Keras callback that multiplies each masked kernel by its mask after every batch.

    Use it when fine-tuning a model from :func:`prune_unstructured` so the pruned weights
    stay exactly zero (the optimizer would otherwise revive them). The masks are applied
    once at the start of training too. Layer names missing from the model raise
    ``ValueError`` at the start of training.

    Example:
        >>> base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")])
        >>> pruned, masks = prune_unstructured(base, ratio=0.5)
        >>> pruned.compile("sgd", "mse")
        >>> _ = pruned.fit(np.ones((8, 4)), np.ones((8, 2)), verbose=0,
        ...                callbacks=[MaskCallback(masks)])
        >>> total_sparsity(pruned)[0]
        0.5
    """

    def __init__(self, masks: Dict[str, np.ndarray]) -> None:
        super().__init__()
        self.masks = {name: np.asarray(mask, dtype=bool) for name, mask in masks.items()}
        self._pairs: List[Tuple[tf.Variable, tf.Tensor]] = []

    def on_train_begin(self, logs=None) -> None:
        kernels = prunable_kernels(self.model)
        missing = sorted(set(self.masks) - set(kernels))
        if missing:
            raise ValueError(f"MaskCallback: model {self.model.name!r} has no prunable kernel "
                             f"in layer(s) {missing}; were the masks made for another model?")
        self._pairs = []
        for name, mask in self.masks.items():
            var = kernels[name]
            if tuple(var.shape) != mask.shape:
                raise ValueError(f"MaskCallback: mask for {name!r} has shape {mask.shape}, "
                                 f"kernel has {tuple(var.shape)}")
            self._pairs.append((var, tf.constant(mask, dtype=var.dtype)))
        self.apply()

    def apply(self) -> None:
        """Multiply every masked kernel by its mask now."""
        for var, mask in self._pairs:
            var.assign(var * mask)

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.apply()
