"""Adaptive BatchNormalization: re-estimating BN moving statistics from data after a cut.

This module owns :func:`recalibrate_batchnorm`, and :class:`BatchNormProbe`, which does the
same again and again on one model whose weights change in between. Pruning removes channels
upstream of BatchNormalization layers, so the means and variances those layers learnt no
longer describe their inputs, and accuracy right after the cut collapses even where the
remaining weights are good ("adaptive BN", EagleEye, ECCV 2020). Re-estimating
``moving_mean`` and ``moving_variance`` from a few training batches, with no other weight
touched, recovers much of it. The statistics are exact over the batches given: one pass
through a probe model that outputs, for every BN layer's input, its per-channel count, mean
and sum of squared deviations over the batch (reduced in the backend, so activations never
leave it), called in training mode (each BN normalising with its batch's statistics, as
during training and as ``torch.optim.swa_utils.update_bn`` does); the batches' statistics
are merged in float64 into the mean and population variance over all batches and
positions. The probe's call is compiled once per model (``tf.function`` on TensorFlow,
``jax.jit`` on JAX: :mod:`~surgery.engine.compiled`). It works on tf-keras and on Keras 3
with the TensorFlow, JAX and PyTorch backends.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator, Union

import numpy as np

from tqdm.auto import tqdm

from surgery.engine.compiled import compiled_call
from surgery.engine.graph import ModelGraph, resolve
from surgery.engine.zeroing import to_numpy
from surgery.errors import SurgeryError
from surgery.progress import bars_wanted

logger = logging.getLogger(__name__)

#: Batches :func:`recalibrate_batchnorm` reads by default (EagleEye: a few dozen suffice).
DEFAULT_BATCHES = 30

BatchData = Union[np.ndarray, tuple, Any]  # arrays, (x, y) arrays, a dataset of batches

__all__ = ["recalibrate_batchnorm", "batchnorm_layers", "BatchNormProbe", "DEFAULT_BATCHES"]


def batchnorm_layers(model) -> list:
    """The BatchNormalization layers of ``model`` (by class name, so subclasses such as
    tf-keras's ``BatchNormalizationV2`` count), in the model's layer order.

    >>> from surgery._backend import keras
    >>> x = keras.Input((4, 4, 2)); h = keras.layers.BatchNormalization(name="bn")(x)
    >>> [l.name for l in batchnorm_layers(keras.Model(x, h))]
    ['bn']
    """
    return [layer for layer in model.layers if _is_batchnorm(layer)]


def _is_batchnorm(layer) -> bool:
    return any(c.__name__.startswith("BatchNormalization") for c in type(layer).__mro__)


def _input_batches(data: BatchData, batches: int, batch_size: int) -> Iterator[np.ndarray]:
    """Up to ``batches`` input batches of ``data`` (the ``x`` of ``(x, y)`` forms)."""
    if isinstance(data, tuple) and len(data) in (2, 3) and np.ndim(data[0]) > 1:
        data = data[0]  # (x, y) or (x, y, sample_weight) arrays
    if isinstance(data, np.ndarray):
        for n, start in enumerate(range(0, len(data), batch_size)):
            if n >= batches:
                return
            yield data[start:start + batch_size]
        return
    if not isinstance(data, Iterable):
        raise SurgeryError(
            f"recalibrate_batchnorm: data must be an array of inputs, an (x, y) tuple of "
            f"arrays or a tf.data.Dataset / iterable of batches, got {type(data).__name__}; "
            "pass e.g. splits.train or (x_train, y_train)")
    for n, element in enumerate(data):
        if n >= batches:
            return
        if isinstance(element, (tuple, list)):
            element = element[0]
        elif isinstance(element, dict) and "x" in element:
            element = element["x"]
        yield np.asarray(element)


def _reduce_axes(layer, rank: int) -> tuple:
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    kept = {a % rank for a in axis}
    return tuple(a for a in range(rank) if a not in kept)


def _check_flat(graph: ModelGraph) -> None:
    """Refuse subclassed models and BN layers hidden in nested models."""
    graph.require_functional()
    model = graph.model
    nested = [l.name for l in model.layers if graph.is_nested(l) and batchnorm_layers(l)]
    if nested:
        raise SurgeryError(
            f"recalibrate_batchnorm: BatchNormalization layers inside the nested model "
            f"{nested[0]!r} are not reachable from model {model.name!r}; flatten it first "
            "with surgery.flatten_model(model)")


def _probe(graph: ModelGraph, layers: list):
    """A model from the graph's inputs to the per-channel count, mean and sum of squared
    deviations (over a batch) of the input of each layer in ``layers``: three outputs a
    layer, reduced where the model runs (only the statistics leave it, not the
    activations)."""
    model = graph.model
    tensors = []
    for layer in layers:
        if len(graph.nodes_of(layer)) != 1:
            raise SurgeryError(
                f"recalibrate_batchnorm: BatchNormalization layer {layer.name!r} is called "
                f"{len(graph.nodes_of(layer))} times in model {model.name!r}; its "
                "statistics would mix several inputs. Give each call its own layer")
        tensors += graph.moments(layer.input, _reduce_axes(layer, len(layer.input.shape)))
    return graph.submodel(tensors)


def recalibrate_batchnorm(model, data: BatchData, batches: int = DEFAULT_BATCHES, *,
                          batch_size: int = 32, progress: bool = False):
    """Re-estimate ``moving_mean`` and ``moving_variance`` of every BatchNormalization
    layer of ``model`` from ``data`` ("adaptive BN"), changing no other weight.

    Like ``model.fit``, this updates ``model`` **in place** (re-estimating its statistics
    is the point) and returns the same model, so it chains: ``recalibrate_batchnorm(
    surgery.apply(model, plan), data)``. Copy a model first (``keras.models.clone_model``
    + ``set_weights``) to keep the old statistics.

    Each layer's new statistics are the per-channel mean and population variance of its
    input over every example and position of the first ``batches`` batches, with the model
    run in training mode (each BatchNormalization layer normalising by its batch's
    statistics, as in training; Dropout is active too). Layers with ``trainable=False``
    normalise with their moving statistics there, as Keras does. Recalibrate on training
    data, never on the test split.

    Args:
        model: a functional or Sequential ``keras.Model`` (tf-keras or Keras 3, any
            backend).
        data: an array of inputs, an ``(x, y)`` tuple of arrays, or a ``tf.data.Dataset``
            (or any other iterable, such as a list) of ``x`` or ``(x, y)`` batches.
        batches: how many batches to read (at least 1); fewer when ``data`` ends first.
        batch_size: batch size used to cut array ``data`` into batches.
        progress: show a tqdm bar over the batches (in a terminal or a notebook; see
            :func:`surgery.progress.bars_wanted`).

    Raises:
        SurgeryError: ``batches`` < 1, ``data`` of an unknown form or empty, or a
            BatchNormalization layer that cannot be probed (nested or shared).

    Example:
        >>> import numpy as np
        >>> from surgery._backend import keras
        >>> x = keras.Input((4, 4, 3)); h = keras.layers.Conv2D(2, 1, name="conv")(x)
        >>> m = keras.Model(x, keras.layers.BatchNormalization(name="bn")(h))
        >>> data = np.random.default_rng(0).normal(3.0, 2.0, (64, 4, 4, 3)).astype("float32")
        >>> recalibrate_batchnorm(m, data, batches=2) is m
        True
        >>> inputs = m.get_layer("conv")(data[:64]).numpy()
        >>> bool(np.allclose(m.get_layer("bn").moving_mean.numpy(), inputs.mean((0, 1, 2)),
        ...                  atol=1e-5))
        True
    """
    _check_counts(batches, batch_size)
    probe = BatchNormProbe(resolve(model, "recalibrate_batchnorm"))
    if not probe.layers:
        logger.info("recalibrate_batchnorm: model %r has no BatchNormalization layer",
                    model.name)
        return model
    examples = probe.recalibrate(data, batches, batch_size=batch_size, progress=progress)
    logger.info("recalibrate_batchnorm: %d BatchNormalization layers re-estimated on %d "
                "examples", len(probe.layers), examples)
    return model


class BatchNormProbe:
    """Adaptive BN for one model, built once and run again whenever its weights change
    (:func:`recalibrate_batchnorm` runs one once). The probe model, from the model's inputs
    to the batch statistics of every BatchNormalization layer's input, is built here, and
    its training-mode call compiled once for the backend
    (:func:`~surgery.engine.compiled.compiled_call`), so later runs on the same model
    compile nothing: that is how :mod:`~surgery.calibration.stand_in` recalibrates one
    candidate plan after another.

    Example::

        probe = BatchNormProbe(resolve(model))   # SurgeryError: nested or shared BN layers
        probe.recalibrate(x_train, batches=30)   # the moving statistics, re-estimated
    """

    def __init__(self, graph: ModelGraph):
        _check_flat(graph)
        #: the model's BatchNormalization layers, whose statistics :meth:`recalibrate` sets
        self.layers = batchnorm_layers(graph.model)
        self._call = (compiled_call(graph.with_model(_probe(graph, self.layers)), training=True)
                      if self.layers else None)

    def recalibrate(self, data: BatchData, batches: int = DEFAULT_BATCHES, *,
                    batch_size: int = 32, progress: bool = False) -> int:
        """Set every layer's moving statistics to those of its input over the first
        ``batches`` batches of ``data`` (see :func:`recalibrate_batchnorm`); returns how
        many examples were read."""
        # read before running: a tf.data pipeline interleaved with JAX's computations ran
        # at half speed (2.6 s against 1.5 s for 30 batches on a 2-core CPU)
        inputs = list(_input_batches(data, int(batches), int(batch_size)))
        stream = tqdm(inputs, total=len(inputs),
                      desc="recalibrating BatchNormalization", unit="batch", leave=False,
                      disable=not bars_wanted(progress))
        moments = [_Moments(layer) for layer in self.layers]
        examples = _measure(self._call, moments, stream)
        for moment in moments:
            moment.assign()
        return examples


def _check_counts(batches, batch_size) -> None:
    if isinstance(batches, bool) or not isinstance(batches, (int, np.integer)) or batches < 1:
        raise SurgeryError(f"recalibrate_batchnorm: batches must be an integer >= 1, got "
                           f"{batches!r}; use 0 in the CLI's --recalibrate-batches to skip it")
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise SurgeryError(f"recalibrate_batchnorm: batch_size must be >= 1, got {batch_size}")


class _Moments:
    """The per-channel count, mean and sum of squared deviations (M2) of one
    BatchNormalization layer's input, in float64, the probe's batch statistics merged batch
    by batch (Chan et al.), so the result is the mean and population variance over every
    example and position."""

    def __init__(self, layer):
        self.layer = layer
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, n: np.ndarray, mean: np.ndarray, sq: np.ndarray) -> None:
        """Merge one batch's per-channel count ``n``, ``mean`` and sum of squared
        deviations ``sq``."""
        n, mean, sq = (np.asarray(a, np.float64) for a in (n, mean, sq))
        total = self.count + n  # the first batch: exactly its own mean and M2
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + sq + np.square(delta) * (self.count * n / total)
        self.count = total

    def assign(self) -> None:
        """Make the mean and variance the layer's moving statistics (in their dtype)."""
        shape = tuple(self.layer.moving_mean.shape)
        dtype = to_numpy(self.layer.moving_mean).dtype
        self.layer.moving_mean.assign(np.reshape(self.mean, shape).astype(dtype))
        self.layer.moving_variance.assign(np.reshape(self.m2 / self.count, shape).astype(dtype))


def _measure(call, moments: list, stream: Iterable[np.ndarray]) -> int:
    """Run the probe's training-mode ``call`` on every batch of ``stream``, adding each of
    its outputs to the matching ``moments``; returns how many examples it read."""
    examples = 0
    for x in stream:
        examples += len(x)
        outs = call(x)
        for k, moment in enumerate(moments):
            moment.add(*outs[3 * k:3 * k + 3])
    if examples == 0:
        raise SurgeryError("recalibrate_batchnorm: data holds no batches; pass training "
                           "data (an array, (x, y) arrays or a dataset of batches)")
    return examples
