"""Weight-only criteria: ``l1``, ``l2``, ``bn_gamma`` and ``fpgm``.

These read kernels (and, for ``bn_gamma``, the scale of the BatchNormalization right
after the layer) and never run the model, so they ignore ``data=``. Each is registered
under its own name when this module is imported; ``l1`` is also the fallback that
``bn_gamma`` and ``thinet`` use for layers they cannot score.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from surgery._backend import keras
from surgery.engine.graph import ModelGraph, resolve
from surgery.pruning.criteria._graph import (
    _channel_scale, _filter_matrix, _n_out_channels, _resolve_layers,
)
from surgery.pruning.criteria._registry import Data, logger, register_criterion

@register_criterion("l1")
def l1(model: keras.Model, layer_names: Sequence[str], data: Optional[Data] = None,
       **options: Any) -> dict[str, np.ndarray]:
    """L1 norm of each output filter: ``s_f = sum_i |W[..., f]|``.

    The kernel slice of filter ``f`` spans all axes but the output one (axis -1; -2 for
    ConvNDTranspose; SeparableConv uses its pointwise kernel; DepthwiseConv2D output
    ``c * depth_multiplier + m`` uses ``depthwise_kernel[..., c, m]``). Bias is ignored.

    >>> import numpy as np
    >>> from surgery._backend import keras
    >>> from surgery.pruning.criteria import l1
    >>> x = keras.Input((8, 8, 3)); c = keras.layers.Conv2D(4, 3, name="c")
    >>> model = keras.Model(x, c(x))
    >>> k, b = c.get_weights(); k[..., 2] = 0; c.set_weights([k, b])
    >>> int(np.argmin(l1(model, ["c"])["c"]))
    2
    """
    graph = resolve(model, "l1")
    layers = _resolve_layers(graph, layer_names)
    return {layer.name: np.abs(_filter_matrix(graph, layer)).sum(axis=1) for layer in layers}


@register_criterion("l2")
def l2(model: keras.Model, layer_names: Sequence[str], data: Optional[Data] = None,
       **options: Any) -> dict[str, np.ndarray]:
    """L2 norm of each output filter: ``s_f = sqrt(sum_i W[..., f]^2)`` (axes as in ``l1``).

    >>> from surgery._backend import keras
    >>> from surgery.pruning.criteria import l2
    >>> x = keras.Input((4,)); model = keras.Model(x, keras.layers.Dense(3, name="d")(x))
    >>> l2(model, ["d"])["d"].shape
    (3,)
    """
    graph = resolve(model, "l2")
    layers = _resolve_layers(graph, layer_names)
    return {
        layer.name: np.sqrt(np.square(_filter_matrix(graph, layer).astype(np.float64))
                            .sum(axis=1))
        for layer in layers
    }


def _direct_scale(graph: ModelGraph, layer) -> Optional[np.ndarray]:
    """The per-channel scale (BatchNormalization gamma) of the layer that directly
    consumes ``layer``'s output, if any."""
    n_out = _n_out_channels(graph, layer)
    for node in graph.nodes_of(layer):
        for consumer in graph.consumers(node):
            scale = _channel_scale(consumer.info)
            if scale is not None and scale.size == n_out:
                return scale
    return None


@register_criterion("bn_gamma")
def bn_gamma(model: keras.Model, layer_names: Sequence[str], data: Optional[Data] = None,
             **options: Any) -> dict[str, np.ndarray]:
    """``|gamma_f|`` of the BatchNormalization that directly normalises the layer's output.

    Network slimming (Liu et al. 2017): a channel whose BN scale is ~0 outputs a constant.
    The BN must consume the layer's output directly (nothing in between) and have
    ``scale=True``. Layers without one fall back to :func:`l1`, with one
    ``logging.warning`` per call naming them.

    >>> import numpy as np
    >>> from surgery._backend import keras
    >>> from surgery.pruning.criteria import bn_gamma
    >>> x = keras.Input((8, 8, 3)); h = keras.layers.Conv2D(4, 3, name="c")(x)
    >>> bn = keras.layers.BatchNormalization(); model = keras.Model(x, bn(h))
    >>> g, b, m, v = bn.get_weights(); g[1] = 0.0; bn.set_weights([g, b, m, v])
    >>> int(np.argmin(bn_gamma(model, ["c"])["c"]))
    1
    """
    graph = resolve(model, "bn_gamma")
    layers = _resolve_layers(graph, layer_names)
    out: dict[str, np.ndarray] = {}
    fallback: list[str] = []
    for layer in layers:
        scale = _direct_scale(graph, layer)
        if scale is None:
            fallback.append(layer.name)
            continue
        out[layer.name] = np.abs(np.asarray(scale, dtype=np.float64).reshape(-1))
    if fallback:
        logger.warning(
            "bn_gamma: no BatchNormalization directly after layer(s) %s; using l1 for them",
            ", ".join(repr(n) for n in fallback),
        )
        out.update(l1(graph, fallback))
    return out


@register_criterion("fpgm")
def fpgm(model: keras.Model, layer_names: Sequence[str], data: Optional[Data] = None,
         **options: Any) -> dict[str, np.ndarray]:
    """Filter Pruning via Geometric Median (He et al., CVPR 2019).

    ``s_f = sum_g ||W_f - W_g||_2`` over the other filters ``g`` of the same layer (rows of
    the kernel as in ``l1``). Filters close to the geometric median of the layer are the
    ones the others can best replace, so they get the lowest scores.

    >>> import numpy as np
    >>> from surgery._backend import keras
    >>> from surgery.pruning.criteria import fpgm
    >>> x = keras.Input((16,)); d = keras.layers.Dense(32, name="d")
    >>> model = keras.Model(x, d(x))
    >>> k, b = d.get_weights(); k[:, 5] = 0; d.set_weights([k, b])
    >>> int(np.argmin(fpgm(model, ["d"])["d"]))
    5
    """
    graph = resolve(model, "fpgm")
    layers = _resolve_layers(graph, layer_names)
    out = {}
    for layer in layers:
        w = _filter_matrix(graph, layer).astype(np.float64)
        sq = np.square(w).sum(axis=1)
        d2 = sq[:, None] + sq[None, :] - 2.0 * (w @ w.T)
        dist = np.sqrt(np.maximum(d2, 0.0))
        np.fill_diagonal(dist, 0.0)
        out[layer.name] = dist.sum(axis=1)
    return out
