"""Activation-based criteria: ``apoz`` (zeros after the ReLU), ``activation`` (Minitron's
mean magnitude) and ``taylor`` (first-order Taylor, activation times loss gradient).

All run the model once, in inference mode, over at most ``max_samples`` examples of
``data=`` and score every requested layer in that one pass through a probe model built
on the layers' output tensors. This module also owns what ``taylor`` needs about the
model's output: whether it is already a probability and the per-example cross-entropy.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from surgery._backend import keras
from surgery.pruning.criteria._data import _iter_batches, _reduce_to_channels, _require_data
from surgery.engine.graph import ModelGraph, resolve
from surgery.pruning.criteria._forward import forward, taylor_probe, taylor_products
from surgery.pruning.criteria._graph import (
    _activation, _call, _channel_axis, _follow_chain, _is_identity_like, _is_relu_like,
    _resolve_layers,
)
from surgery.pruning.criteria._registry import (
    DEFAULT_BATCH_SIZE, DEFAULT_MAX_SAMPLES, Data, register_criterion,
)

def _apoz_tensor(graph: ModelGraph, layer: keras.layers.Layer) -> tuple[Any, int]:
    """The tensor whose zeros APoZ counts for ``layer`` and its channel axis."""
    node = _call(graph, layer)
    axis = _channel_axis(graph, layer)
    if _activation(node.info) in ("relu", "relu6"):
        return node.outputs[0], axis
    hit = _follow_chain(graph, node, _is_identity_like, _is_relu_like)
    if hit is None:
        return node.outputs[0], axis
    return hit.outputs[0], axis


@register_criterion("apoz", needs_data=True)
def apoz(model: keras.Model, layer_names: Sequence[str], data: Optional[Data] = None, *,
         max_samples: int = DEFAULT_MAX_SAMPLES, batch_size: int = DEFAULT_BATCH_SIZE,
         **options: Any) -> dict[str, np.ndarray]:
    """``s_f = 1 - APoZ_f``, APoZ = Average Percentage of Zeros (Hu et al. 2016).

    ``APoZ_f = mean over examples and positions of [a_f == 0]`` where ``a`` is the output
    of the ReLU that follows the layer: its own ``activation='relu'|'relu6'``, or the first
    ``ReLU`` / ``Activation('relu'|'relu6')`` reached through a single-consumer chain of
    BatchNormalization / Dropout-like / linear pass-throughs. Without such an activation
    the layer's own output is used (exact zeros only). One pass over at most
    ``max_samples`` examples of ``data`` for all layers.

    >>> import numpy as np
    >>> from surgery._backend import keras
    >>> from surgery.pruning.criteria import apoz
    >>> x = keras.Input((8, 8, 3)); c = keras.layers.Conv2D(4, 3, activation="relu", name="c")
    >>> model = keras.Model(x, c(x))
    >>> k, b = c.get_weights(); k[..., 3] = 0; c.set_weights([k, b])
    >>> xs = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype("float32")
    >>> int(np.argmin(apoz(model, ["c"], (xs, None))["c"]))
    3
    """
    graph = resolve(model, "apoz")
    _require_data("apoz", data)
    layers = _resolve_layers(graph, layer_names)
    targets = [_apoz_tensor(graph, layer) for layer in layers]
    probe = graph.submodel([t for t, _ in targets])
    zeros: list[Optional[np.ndarray]] = [None] * len(layers)
    totals = [0] * len(layers)
    for x, _ in _iter_batches(data, max_samples, batch_size):
        for i, (t, (_, axis)) in enumerate(zip(forward(graph, probe, x), targets)):
            flat, _ = _reduce_to_channels(t, axis)
            z = (flat == 0).sum(axis=0).astype(np.float64)
            zeros[i] = z if zeros[i] is None else zeros[i] + z
            totals[i] += flat.shape[0]
    if any(z is None for z in zeros):
        raise ValueError("apoz: data= yielded no examples")
    return {layer.name: 1.0 - z / total for layer, z, total in zip(layers, zeros, totals)}


@register_criterion("activation", needs_data=True)
def activation(model: keras.Model, layer_names: Sequence[str], data: Optional[Data] = None, *,
               max_samples: int = DEFAULT_MAX_SAMPLES, batch_size: int = DEFAULT_BATCH_SIZE,
               **options: Any) -> dict[str, np.ndarray]:
    """Minitron's activation importance (Muralidharan et al. 2024): each output channel's
    mean magnitude over an example's positions, then the L2 norm of that over the
    examples: ``s_c = sqrt(sum_n (mean_p |a_{n,p,c}|)^2)``, with ``a`` the layer's output.
    It needs no labels: ``data=`` may be the inputs alone. One pass over at most
    ``max_samples`` examples of ``data`` for all layers.

    >>> import numpy as np
    >>> from surgery._backend import keras
    >>> from surgery.pruning.criteria import activation
    >>> x = keras.Input((8, 8, 3)); c = keras.layers.Conv2D(4, 3, name="c")
    >>> model = keras.Model(x, c(x))
    >>> k, b = c.get_weights(); k[..., 2], b[2] = 0, 0; c.set_weights([k, b])
    >>> xs = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype("float32")
    >>> s = activation(model, ["c"], xs)["c"]
    >>> int(np.argmin(s)), float(s[2])
    (2, 0.0)
    """
    graph = resolve(model, "activation")
    _require_data("activation", data)
    layers = _resolve_layers(graph, layer_names)
    axes = [_channel_axis(graph, layer) for layer in layers]
    probe = graph.submodel([_call(graph, layer).outputs[0] for layer in layers])
    sums: list[Optional[np.ndarray]] = [None] * len(layers)
    for x, _ in _iter_batches(data, max_samples, batch_size):
        for i, (t, axis) in enumerate(zip(forward(graph, probe, x), axes)):
            t = np.moveaxis(np.abs(np.asarray(t, np.float64)), axis, -1)
            per_example = t.reshape(t.shape[0], -1, t.shape[-1]).mean(axis=1)
            squares = np.square(per_example).sum(axis=0)
            sums[i] = squares if sums[i] is None else sums[i] + squares
    if any(s is None for s in sums):
        raise ValueError("activation: data= yielded no examples")
    return {layer.name: np.sqrt(s) for layer, s in zip(layers, sums)}


def _output_is_probability(graph: ModelGraph) -> bool:
    calls = graph.nodes_of(graph.output_layer())
    if not calls:
        return False
    info = calls[-1].info
    return _activation(info) in ("softmax", "sigmoid")


@register_criterion("taylor", needs_data=True)
def taylor(model: keras.Model, layer_names: Sequence[str], data: Optional[Data] = None, *,
           max_samples: int = DEFAULT_MAX_SAMPLES, batch_size: int = DEFAULT_BATCH_SIZE,
           **options: Any) -> dict[str, np.ndarray]:
    """First-order Taylor importance (Molchanov et al., ICLR 2017), on the layer's output.

    ``s_f = 1/N sum_n | sum_p a[n, p, f] * dL_n/da[n, p, f] |``: for each example ``n``
    the product of the output activation and the gradient of that example's loss w.r.t.
    it, summed over spatial positions ``p``, in absolute value, averaged over examples
    (equation 8 of the paper, up to the constant 1/positions). ``L`` is the categorical
    cross-entropy of the model's (single) output against ``y`` (one-hot or integer
    labels; from logits unless the output layer applies softmax/sigmoid; binary
    cross-entropy for one-unit outputs). The model runs in inference mode, once over at
    most ``max_samples`` examples, for all layers together.

    >>> import numpy as np
    >>> from surgery._backend import keras
    >>> from surgery.pruning.criteria import taylor
    >>> x = keras.Input((8, 8, 3)); c = keras.layers.Conv2D(4, 3, name="c")
    >>> h = keras.layers.GlobalAveragePooling2D()(c(x))
    >>> model = keras.Model(x, keras.layers.Dense(2)(h))
    >>> k, b = c.get_weights(); k[..., 0] = 0; c.set_weights([k, b])
    >>> rng = np.random.default_rng(0)
    >>> data = (rng.normal(size=(16, 8, 8, 3)).astype("float32"), rng.integers(0, 2, 16))
    >>> int(np.argmin(taylor(model, ["c"], data)["c"]))
    0
    """
    graph = resolve(model, "taylor")
    _require_data("taylor", data)
    layers = _resolve_layers(graph, layer_names)
    n_outputs = len(graph.outputs())
    if n_outputs != 1:
        raise ValueError(
            f"taylor needs a single-output model; model {graph.model.name!r} has "
            f"{n_outputs} outputs (score a single-output sub-model instead)"
        )
    probabilities = _output_is_probability(graph)
    acts = [_call(graph, layer).outputs[0] for layer in layers]
    axes = [_channel_axis(graph, layer) for layer in layers]
    probe = taylor_probe(graph, acts)
    sums: list[Optional[np.ndarray]] = [None] * len(layers)
    seen = 0
    for x, y in _iter_batches(data, max_samples, batch_size):
        if y is None:
            raise ValueError("taylor needs labels: pass data= as (x, y) or (x, y) batches")
        products = taylor_products(graph, probe, acts, x, y, probabilities)
        n = int(products[0].shape[0])
        for i, (p, axis) in enumerate(zip(products, axes)):
            prod = np.moveaxis(p.astype(np.float64), axis, -1)
            per_example = np.abs(prod.reshape(n, -1, prod.shape[-1]).sum(axis=1)).sum(axis=0)
            sums[i] = per_example if sums[i] is None else sums[i] + per_example
        seen += n
    if seen == 0:
        raise ValueError("taylor: data= yielded no examples")
    return {layer.name: s / seen for layer, s in zip(layers, sums)}
