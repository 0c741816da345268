"""Channel-importance criteria: how much each output channel of a layer is worth keeping.

This module owns the scoring step of the pipeline (between sparse training and planning):
a registry of *criteria*, functions with one signature
``criterion(model, layer_names, data=None, **options) -> {layer_name: scores}`` that give
one float per output channel of each requested *producer* layer (Conv1D/2D/3D,
Conv2DTranspose, SeparableConv2D, Dense, and DepthwiseConv2D whose output channels are
``in_channels * depth_multiplier``), HIGHER = MORE IMPORTANT. Weight-only criteria
(``l1``, ``l2``, ``bn_gamma``, ``fpgm``) read kernels; data-driven ones (``apoz``,
``taylor``, ``thinet``) run the model once over at most ``max_samples`` examples of
``data`` (an ``(x, y)`` tuple of arrays or a ``tf.data.Dataset`` of ``(x, y)`` batches),
collecting every requested layer in that single pass. It also owns
:func:`select_channels`, which turns a score vector into the indices to delete. It never
modifies the model and knows nothing about channel groups or surgery (``surgery.graph``,
``surgery.plan`` and ``surgery.apply`` do).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np

from surgery._backend import keras, tf

logger = logging.getLogger(__name__)

__all__ = [
    "CRITERIA",
    "Criterion",
    "Data",
    "channel_scores",
    "get_criterion",
    "register_criterion",
    "select_channels",
    "thinet_greedy",
    "l1",
    "l2",
    "bn_gamma",
    "apoz",
    "taylor",
    "fpgm",
    "thinet",
]

#: ``(x, y)`` numpy arrays (``y`` may be ``None`` for label-free criteria) or a
#: ``tf.data.Dataset`` of ``(x, y)`` batches.
Data = Union[tuple, tf.data.Dataset]
#: ``criterion(model, layer_names, data) -> {layer_name: scores}``; criteria may also take
#: keyword options (``max_samples=``, ``n_locations=`` ...) that ``channel_scores`` passes on.
Criterion = Callable[[keras.Model, Sequence[str], Optional[Data]], dict[str, np.ndarray]]
#: name -> criterion function; fill it with :func:`register_criterion`.
CRITERIA: dict[str, Criterion] = {}

DEFAULT_MAX_SAMPLES = 512
DEFAULT_BATCH_SIZE = 64

_L = keras.layers


def _classes(*names: str) -> tuple[type, ...]:
    """The ``keras.layers`` classes among ``names`` that exist in this Keras version."""
    return tuple(getattr(_L, n) for n in names if hasattr(_L, n))


_TRANSPOSE = _classes("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
_SEPARABLE = _classes("SeparableConv1D", "SeparableConv2D")
_DEPTHWISE = _classes("DepthwiseConv1D", "DepthwiseConv2D")
_CONV = _classes("Conv1D", "Conv2D", "Conv3D")
_DENSE = _classes("Dense")
_BN = _classes("BatchNormalization")
_IDENTITY_AT_INFERENCE = _classes(
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "Identity",
)
_ELEMENTWISE_ACT = _classes("ReLU", "Activation", "LeakyReLU", "PReLU", "ELU", "ThresholdedReLU")
_CHANNEL_KEEPING = _classes(
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
    "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
)
_RELU_NAMES = ("relu", "relu6")


# --------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------
def register_criterion(name: str, *, needs_data: bool = False) -> Callable[[Criterion], Criterion]:
    """Decorator that registers a criterion under ``name`` (re-registering replaces it).

    The function must accept ``(model, layer_names, data=None, **options)`` and return
    ``{layer_name: 1-D scores}``, one float per output channel, higher = keep.
    ``needs_data`` is recorded as ``fn.needs_data`` so callers can check it up front.

    >>> import numpy as np
    >>> from surgery.criteria import register_criterion, CRITERIA
    >>> @register_criterion("ones")
    ... def ones(model, layer_names, data=None, **options):
    ...     return {n: np.ones(model.get_layer(n).output_shape[-1]) for n in layer_names}
    >>> CRITERIA["ones"] is ones
    True
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_criterion needs a non-empty name string, got {name!r}")

    def decorate(fn: Criterion) -> Criterion:
        if not callable(fn):
            raise TypeError(f"criterion {name!r} must be callable, got {type(fn).__name__}")
        try:
            fn.needs_data = needs_data  # type: ignore[attr-defined]
        except (AttributeError, TypeError):  # e.g. a bound method or builtin
            pass
        if name in CRITERIA and CRITERIA[name] is not fn:
            logger.debug("criterion %r re-registered; the new function replaces the old", name)
        CRITERIA[name] = fn
        return fn

    return decorate


def get_criterion(name_or_fn: Union[str, Criterion]) -> Criterion:
    """Return the criterion registered as ``name_or_fn``, or the callable itself.

    >>> from surgery.criteria import get_criterion
    >>> get_criterion("l1").__name__
    'l1'
    >>> get_criterion("nope")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown criterion 'nope'; known criteria: ...
    """
    if callable(name_or_fn):
        return name_or_fn
    if isinstance(name_or_fn, str) and name_or_fn in CRITERIA:
        return CRITERIA[name_or_fn]
    raise ValueError(
        f"unknown criterion {name_or_fn!r}; known criteria: {', '.join(sorted(CRITERIA))} "
        "(or pass a callable, or register one with surgery.criteria.register_criterion)"
    )


def channel_scores(
    model: keras.Model,
    layer_names: Sequence[str],
    criterion: Union[str, Criterion] = "l1",
    data: Optional[Data] = None,
    **options: Any,
) -> dict[str, np.ndarray]:
    """Score the output channels of ``layer_names`` with ``criterion`` (a name or callable).

    Checks the layer names first, then that the criterion returned one finite float per
    output channel for every layer; ``options`` go to the criterion (e.g.
    ``max_samples=``). Returns ``{layer_name: float64 array}``, higher = keep.

    >>> import numpy as np
    >>> from surgery._backend import keras
    >>> from surgery.criteria import channel_scores
    >>> x = keras.Input((8, 8, 3)); h = keras.layers.Conv2D(4, 3, name="c")(x)
    >>> model = keras.Model(x, keras.layers.GlobalAveragePooling2D()(h))
    >>> channel_scores(model, ["c"], "l2")["c"].shape
    (4,)
    """
    names = list(layer_names)
    layers = _resolve_layers(model, names)
    fn = get_criterion(criterion)
    if getattr(fn, "needs_data", False) and data is None:
        raise ValueError(_no_data_message(getattr(fn, "__name__", str(criterion))))
    result = fn(model, names, data, **options)
    if not isinstance(result, dict):
        raise ValueError(
            f"criterion {criterion!r} returned {type(result).__name__}, expected a dict "
            "{layer_name: scores}"
        )
    out: dict[str, np.ndarray] = {}
    for name, layer in zip(names, layers):
        if name not in result:
            raise ValueError(f"criterion {criterion!r} returned no scores for layer {name!r}")
        scores = np.asarray(result[name], dtype=np.float64).reshape(-1)
        expected = _n_out_channels(layer)
        if scores.shape[0] != expected:
            raise ValueError(
                f"criterion {criterion!r} returned {scores.shape[0]} scores for layer "
                f"{name!r} ({type(layer).__name__}), which has {expected} output channels"
            )
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"criterion {criterion!r} returned non-finite scores for {name!r}")
        out[name] = scores
    return out


def select_channels(
    scores: np.ndarray,
    *,
    ratio: Optional[float] = None,
    threshold: Optional[float] = None,
    min_keep: int = 1,
) -> list[int]:
    """Indices of the channels to DELETE (sorted), given importance ``scores`` (higher = keep).

    Exactly one of ``ratio`` (delete the ``floor(ratio * n)`` lowest-scored channels) or
    ``threshold`` (delete every channel scoring strictly below it) must be given. Never
    deletes so many that fewer than ``min_keep`` channels remain: the lowest-scored ones go
    first. Ties are broken by channel index (lower index deleted first).

    >>> from surgery.criteria import select_channels
    >>> select_channels([0.3, 0.1, 0.9, 0.2], ratio=0.5)
    [1, 3]
    >>> select_channels([0.3, 0.1, 0.9, 0.2], threshold=1.0, min_keep=2)
    [1, 3]
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if (ratio is None) == (threshold is None):
        raise ValueError("select_channels needs exactly one of ratio= or threshold=")
    if np.isnan(s).any():
        raise ValueError("select_channels got NaN scores; fix the criterion that produced them")
    if int(min_keep) != min_keep or min_keep < 0:
        raise ValueError(f"min_keep must be a non-negative integer, got {min_keep!r}")
    n = s.shape[0]
    order = np.argsort(s, kind="stable")
    if ratio is not None:
        if not 0.0 <= float(ratio) <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {ratio!r}")
        n_delete = int(math.floor(float(ratio) * n + 1e-9))  # 0.29 * 100 is 28.999...
    else:
        n_delete = int(np.count_nonzero(s < float(threshold)))
    n_delete = max(0, min(n_delete, n - int(min_keep)))
    return sorted(int(i) for i in order[:n_delete])


# --------------------------------------------------------------------------------------
# model helpers
# --------------------------------------------------------------------------------------
def _producer_kind(layer: keras.layers.Layer) -> Optional[str]:
    if _TRANSPOSE and isinstance(layer, _TRANSPOSE):
        return "transpose"
    if _SEPARABLE and isinstance(layer, _SEPARABLE):
        return "separable"
    if _DEPTHWISE and isinstance(layer, _DEPTHWISE):
        return "depthwise"
    if isinstance(layer, _CONV + _DENSE):
        return "plain"
    return None


def _resolve_layers(model: keras.Model, names: Sequence[str]) -> list[keras.layers.Layer]:
    if isinstance(names, str):
        raise ValueError(f"layer_names must be a sequence of names, got the string {names!r}")
    by_name = {layer.name: layer for layer in model.layers}
    layers = []
    for name in names:
        if name not in by_name:
            raise ValueError(
                f"unknown layer {name!r}: model {model.name!r} has no top-level layer of that "
                "name (see model.summary(); layers of nested models must be named in them)"
            )
        layer = by_name[name]
        if _producer_kind(layer) is None:
            raise ValueError(
                f"layer {name!r} ({type(layer).__name__}) has no prunable output channels; "
                "criteria score Conv1D/2D/3D, Conv2DTranspose, SeparableConv2D, "
                "DepthwiseConv2D and Dense layers"
            )
        layers.append(layer)
    return layers


def _filter_matrix(layer: keras.layers.Layer) -> np.ndarray:
    """The layer's kernel as ``(out_channels, fan)``: one row per output channel."""
    kind = _producer_kind(layer)
    if kind == "separable":
        kernel = np.asarray(layer.pointwise_kernel.numpy())
        return np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1)
    if kind == "depthwise":
        kernel = np.asarray(layer.depthwise_kernel.numpy())  # (*k, in, depth_multiplier)
        flat = kernel.reshape(-1, kernel.shape[-2] * kernel.shape[-1])  # out = c * dm + m
        return flat.T
    kernel = np.asarray(layer.kernel.numpy())
    axis = -2 if kind == "transpose" else -1
    kernel = np.moveaxis(kernel, axis, 0)
    return kernel.reshape(kernel.shape[0], -1)


def _n_out_channels(layer: keras.layers.Layer) -> int:
    return int(_filter_matrix(layer).shape[0])


def _channel_axis(layer: keras.layers.Layer) -> int:
    return 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else -1


def _nodes_in_model(model: keras.Model, layer: keras.layers.Layer) -> list[Any]:
    keys = getattr(model, "_network_nodes", None)
    if keys is None:
        raise ValueError(
            f"model {model.name!r} ({type(model).__name__}) is not a functional or Sequential "
            "Keras model with a known graph; data-driven criteria need one"
        )
    return [
        node for i, node in enumerate(layer._inbound_nodes) if f"{layer.name}_ib-{i}" in keys
    ]


def _producer_node(model: keras.Model, layer: keras.layers.Layer) -> Any:
    nodes = _nodes_in_model(model, layer)
    if not nodes:
        raise ValueError(f"layer {layer.name!r} is not connected in model {model.name!r}")
    if len(nodes) > 1:
        logger.warning(
            "layer %r is called %d times in model %r; data-driven criteria use its first call",
            layer.name, len(nodes), model.name,
        )
    return nodes[0]


def _consumers(model: keras.Model, node: Any) -> list[tuple[keras.layers.Layer, Any]]:
    """(layer, node) pairs in ``model`` that take the output of ``node`` as an input."""
    out = []
    for nxt in node.layer._outbound_nodes:
        if any(p is node for p in nxt.parent_nodes) and any(
            n is nxt for n in _nodes_in_model(model, nxt.layer)
        ):
            out.append((nxt.layer, nxt))
    return out


def _node_output(node: Any) -> Any:
    outputs = node.outputs
    return outputs[0] if isinstance(outputs, (list, tuple)) else outputs


def _node_input(node: Any) -> Any:
    inputs = node.input_tensors
    return inputs[0] if isinstance(inputs, (list, tuple)) else inputs


def _follow_chain(
    model: keras.Model,
    node: Any,
    passthrough: Callable[[keras.layers.Layer], bool],
    target: Callable[[keras.layers.Layer], bool],
) -> Optional[tuple[keras.layers.Layer, Any]]:
    """Walk the single-consumer chain from ``node`` through ``passthrough`` layers to the
    first ``target`` layer; ``None`` when the chain forks, ends or hits anything else."""
    current = node
    for _ in range(len(model.layers) + 1):
        consumers = _consumers(model, current)
        if len(consumers) != 1:
            return None
        layer, nxt = consumers[0]
        if target(layer):
            return layer, nxt
        if not passthrough(layer):
            return None
        current = nxt
    return None


def _activation_name(fn: Any) -> str:
    try:
        name = keras.activations.serialize(fn)
    except Exception:  # noqa: BLE001  (custom callables)
        name = getattr(fn, "__name__", "")
    return name if isinstance(name, str) else ""


def _is_relu_like(layer: keras.layers.Layer) -> bool:
    """True for layers whose output is exactly zero wherever the input is not positive."""
    if isinstance(layer, _classes("ReLU")):
        slope = float(np.asarray(getattr(layer, "negative_slope", 0.0)))
        return slope == 0.0
    if isinstance(layer, _classes("Activation")):
        return _activation_name(layer.activation) in _RELU_NAMES
    return False


def _is_identity_like(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, _BN + _IDENTITY_AT_INFERENCE):
        return True
    if isinstance(layer, _classes("Activation")):
        return _activation_name(layer.activation) == "linear"
    return False


def _no_data_message(name: str) -> str:
    return (
        f"criterion {name!r} is data-driven: pass data= as an (x, y) tuple of numpy arrays or "
        "a tf.data.Dataset of (x, y) batches (a few hundred examples are enough)"
    )


def _require_data(name: str, data: Optional[Data]) -> None:
    if data is None:
        raise ValueError(_no_data_message(name))


def _n_examples(x: Any) -> int:
    leaf = tf.nest.flatten(x)[0]
    return int(leaf.shape[0])


def _iter_batches(
    data: Data,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Iterator[tuple[Any, Any]]:
    """Yield ``(x, y)`` batches (``y`` may be ``None``) holding at most ``max_samples`` examples."""
    if max_samples is not None and max_samples <= 0:
        raise ValueError(f"max_samples must be positive, got {max_samples!r}")
    limit = math.inf if max_samples is None else int(max_samples)

    def split(element: Any) -> tuple[Any, Any]:
        if isinstance(element, (tuple, list)):
            if len(element) == 0:
                raise ValueError("data= holds an empty tuple; expected (x, y)")
            return element[0], (element[1] if len(element) > 1 else None)
        if isinstance(element, dict) and "x" in element:
            return element["x"], element.get("y")
        return element, None

    seen = 0
    if isinstance(data, tf.data.Dataset):
        for element in data:
            x, y = split(element)
            n = _n_examples(x)
            if seen + n > limit:
                keep = int(limit - seen)
                x = tf.nest.map_structure(lambda a: a[:keep], x)
                y = None if y is None else y[:keep]
                n = keep
            if n > 0:
                yield x, y
            seen += n
            if seen >= limit:
                return
        return
    x_all, y_all = split(data)
    total = min(_n_examples(x_all), limit)
    for start in range(0, int(total), int(batch_size)):
        stop = min(start + int(batch_size), int(total))
        x = tf.nest.map_structure(lambda a: a[start:stop], x_all)
        y = None if y_all is None else y_all[start:stop]
        yield x, y


def _reduce_to_channels(t: np.ndarray, axis: int) -> tuple[np.ndarray, int]:
    """Move the channel axis last and flatten the rest: ``(positions, channels)``."""
    t = np.moveaxis(np.asarray(t), axis, -1)
    return t.reshape(-1, t.shape[-1]), t.shape[-1]


# --------------------------------------------------------------------------------------
# weight criteria
# --------------------------------------------------------------------------------------
@register_criterion("l1")
def l1(model: keras.Model, layer_names: Sequence[str], data: Optional[Data] = None,
       **options: Any) -> dict[str, np.ndarray]:
    """L1 norm of each output filter: ``s_f = sum_i |W[..., f]|``.

    The kernel slice of filter ``f`` spans all axes but the output one (axis -1; -2 for
    ConvNDTranspose; SeparableConv uses its pointwise kernel; DepthwiseConv2D output
    ``c * depth_multiplier + m`` uses ``depthwise_kernel[..., c, m]``). Bias is ignored.

    >>> import numpy as np
    >>> from surgery._backend import keras
    >>> from surgery.criteria import l1
    >>> x = keras.Input((8, 8, 3)); c = keras.layers.Conv2D(4, 3, name="c")
    >>> model = keras.Model(x, c(x))
    >>> k, b = c.get_weights(); k[..., 2] = 0; c.set_weights([k, b])
    >>> int(np.argmin(l1(model, ["c"])["c"]))
    2
    """
    layers = _resolve_layers(model, layer_names)
    return {layer.name: np.abs(_filter_matrix(layer)).sum(axis=1) for layer in layers}


@register_criterion("l2")
def l2(model: keras.Model, layer_names: Sequence[str], data: Optional[Data] = None,
       **options: Any) -> dict[str, np.ndarray]:
    """L2 norm of each output filter: ``s_f = sqrt(sum_i W[..., f]^2)`` (axes as in ``l1``).

    >>> from surgery._backend import keras
    >>> from surgery.criteria import l2
    >>> x = keras.Input((4,)); model = keras.Model(x, keras.layers.Dense(3, name="d")(x))
    >>> l2(model, ["d"])["d"].shape
    (3,)
    """
    layers = _resolve_layers(model, layer_names)
    return {
        layer.name: np.sqrt(np.square(_filter_matrix(layer).astype(np.float64)).sum(axis=1))
        for layer in layers
    }


def _direct_bn(model: keras.Model, layer: keras.layers.Layer) -> Optional[keras.layers.Layer]:
    """The BatchNormalization that directly consumes ``layer``'s output, if any."""
    n_out = _n_out_channels(layer)
    for node in _nodes_in_model(model, layer):
        for consumer, _ in _consumers(model, node):
            if isinstance(consumer, _BN) and consumer.scale and consumer.gamma is not None:
                if int(np.prod(consumer.gamma.shape)) == n_out:
                    return consumer
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
    >>> from surgery.criteria import bn_gamma
    >>> x = keras.Input((8, 8, 3)); h = keras.layers.Conv2D(4, 3, name="c")(x)
    >>> bn = keras.layers.BatchNormalization(); model = keras.Model(x, bn(h))
    >>> g, b, m, v = bn.get_weights(); g[1] = 0.0; bn.set_weights([g, b, m, v])
    >>> int(np.argmin(bn_gamma(model, ["c"])["c"]))
    1
    """
    layers = _resolve_layers(model, layer_names)
    out: dict[str, np.ndarray] = {}
    fallback: list[str] = []
    for layer in layers:
        bn = _direct_bn(model, layer)
        if bn is None:
            fallback.append(layer.name)
            continue
        out[layer.name] = np.abs(np.asarray(bn.gamma.numpy(), dtype=np.float64).reshape(-1))
    if fallback:
        logger.warning(
            "bn_gamma: no BatchNormalization directly after layer(s) %s; using l1 for them",
            ", ".join(repr(n) for n in fallback),
        )
        out.update(l1(model, fallback))
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
    >>> from surgery.criteria import fpgm
    >>> x = keras.Input((16,)); d = keras.layers.Dense(32, name="d")
    >>> model = keras.Model(x, d(x))
    >>> k, b = d.get_weights(); k[:, 5] = 0; d.set_weights([k, b])
    >>> int(np.argmin(fpgm(model, ["d"])["d"]))
    5
    """
    layers = _resolve_layers(model, layer_names)
    out = {}
    for layer in layers:
        w = _filter_matrix(layer).astype(np.float64)
        sq = np.square(w).sum(axis=1)
        d2 = sq[:, None] + sq[None, :] - 2.0 * (w @ w.T)
        dist = np.sqrt(np.maximum(d2, 0.0))
        np.fill_diagonal(dist, 0.0)
        out[layer.name] = dist.sum(axis=1)
    return out


# --------------------------------------------------------------------------------------
# data-driven criteria
# --------------------------------------------------------------------------------------
def _apoz_tensor(model: keras.Model, layer: keras.layers.Layer) -> tuple[Any, int]:
    """The tensor whose zeros APoZ counts for ``layer`` and its channel axis."""
    node = _producer_node(model, layer)
    axis = _channel_axis(layer)
    if _activation_name(getattr(layer, "activation", None)) in _RELU_NAMES:
        return _node_output(node), axis
    hit = _follow_chain(model, node, _is_identity_like, _is_relu_like)
    if hit is None:
        return _node_output(node), axis
    return _node_output(hit[1]), axis


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
    >>> from surgery.criteria import apoz
    >>> x = keras.Input((8, 8, 3)); c = keras.layers.Conv2D(4, 3, activation="relu", name="c")
    >>> model = keras.Model(x, c(x))
    >>> k, b = c.get_weights(); k[..., 3] = 0; c.set_weights([k, b])
    >>> xs = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype("float32")
    >>> int(np.argmin(apoz(model, ["c"], (xs, None))["c"]))
    3
    """
    _require_data("apoz", data)
    layers = _resolve_layers(model, layer_names)
    targets = [_apoz_tensor(model, layer) for layer in layers]
    probe = keras.Model(model.inputs, [t for t, _ in targets])
    zeros: list[Optional[np.ndarray]] = [None] * len(layers)
    totals = [0] * len(layers)
    for x, _ in _iter_batches(data, max_samples, batch_size):
        outs = probe(x, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for i, (t, (_, axis)) in enumerate(zip(outs, targets)):
            flat, _ = _reduce_to_channels(t.numpy(), axis)
            z = (flat == 0).sum(axis=0).astype(np.float64)
            zeros[i] = z if zeros[i] is None else zeros[i] + z
            totals[i] += flat.shape[0]
    if any(z is None for z in zeros):
        raise ValueError("apoz: data= yielded no examples")
    return {layer.name: 1.0 - z / total for layer, z, total in zip(layers, zeros, totals)}


def _output_layer(model: keras.Model) -> keras.layers.Layer:
    return model.outputs[0]._keras_history.layer


def _output_is_probability(model: keras.Model) -> bool:
    layer = _output_layer(model)
    if isinstance(layer, _classes("Softmax")):
        return True
    return _activation_name(getattr(layer, "activation", None)) in ("softmax", "sigmoid")


def _per_example_loss(y: Any, pred: Any, probabilities: bool) -> Any:
    """Cross-entropy of ``pred`` vs ``y`` (one-hot or integer labels), one value per element."""
    pred = tf.convert_to_tensor(pred)
    y = tf.convert_to_tensor(y)
    n_classes = pred.shape[-1]
    if n_classes == 1:
        y = tf.reshape(tf.cast(y, pred.dtype), tf.shape(pred))
        return keras.losses.binary_crossentropy(y, pred, from_logits=not probabilities)
    sparse = y.shape.rank < pred.shape.rank or (y.shape[-1] == 1 and n_classes != 1)
    if sparse:
        y = tf.cast(tf.reshape(y, tf.shape(pred)[:-1]), tf.int64)
        return keras.losses.sparse_categorical_crossentropy(
            y, pred, from_logits=not probabilities)
    return keras.losses.categorical_crossentropy(
        tf.cast(y, pred.dtype), pred, from_logits=not probabilities)


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
    >>> from surgery.criteria import taylor
    >>> x = keras.Input((8, 8, 3)); c = keras.layers.Conv2D(4, 3, name="c")
    >>> h = keras.layers.GlobalAveragePooling2D()(c(x))
    >>> model = keras.Model(x, keras.layers.Dense(2)(h))
    >>> k, b = c.get_weights(); k[..., 0] = 0; c.set_weights([k, b])
    >>> rng = np.random.default_rng(0)
    >>> data = (rng.normal(size=(16, 8, 8, 3)).astype("float32"), rng.integers(0, 2, 16))
    >>> int(np.argmin(taylor(model, ["c"], data)["c"]))
    0
    """
    _require_data("taylor", data)
    layers = _resolve_layers(model, layer_names)
    if len(model.outputs) != 1:
        raise ValueError(
            f"taylor needs a single-output model; model {model.name!r} has "
            f"{len(model.outputs)} outputs (score a single-output sub-model instead)"
        )
    probabilities = _output_is_probability(model)
    acts = [_node_output(_producer_node(model, layer)) for layer in layers]
    axes = [_channel_axis(layer) for layer in layers]
    probe = keras.Model(model.inputs, acts + [model.outputs[0]])
    sums: list[Optional[np.ndarray]] = [None] * len(layers)
    seen = 0
    for x, y in _iter_batches(data, max_samples, batch_size):
        if y is None:
            raise ValueError("taylor needs labels: pass data= as (x, y) or (x, y) batches")
        x = tf.nest.map_structure(tf.convert_to_tensor, x)
        with tf.GradientTape() as tape:
            for leaf in tf.nest.flatten(x):
                if leaf.dtype.is_floating:
                    tape.watch(leaf)
            outs = probe(x, training=False)
            loss = tf.reduce_sum(_per_example_loss(y, outs[-1], probabilities))
        grads = tape.gradient(loss, outs[:-1], unconnected_gradients=tf.UnconnectedGradients.ZERO)
        n = int(outs[0].shape[0])
        for i, (a, g, axis) in enumerate(zip(outs[:-1], grads, axes)):
            prod = np.moveaxis((a * g).numpy().astype(np.float64), axis, -1)
            per_example = np.abs(prod.reshape(n, -1, prod.shape[-1]).sum(axis=1)).sum(axis=0)
            sums[i] = per_example if sums[i] is None else sums[i] + per_example
        seen += n
    if seen == 0:
        raise ValueError("taylor: data= yielded no examples")
    return {layer.name: s / seen for layer, s in zip(layers, sums)}


# --------------------------------------------------------------------------------------
# ThiNet
# --------------------------------------------------------------------------------------
def _greedy_from_gram(gram: np.ndarray, n_remove: int) -> list[int]:
    """ThiNet's greedy removal given the Gram matrix ``G = X^T X`` of the contributions.

    ``||sum_{c in T} x_c||^2 = sum_{a, b in T} G[a, b]``, so adding channel ``i`` to ``T``
    costs ``E(T) + 2 * sum_{c in T} G[c, i] + G[i, i]``: O(channels) per step.
    """
    n = gram.shape[0]
    if not 0 <= int(n_remove) <= n:
        raise ValueError(f"n_remove must be between 0 and {n}, got {n_remove!r}")
    diag = np.diag(gram).copy()
    cross = np.zeros(n)  # sum_{c in T} G[c, i]
    removed: list[int] = []
    taken = np.zeros(n, dtype=bool)
    for _ in range(int(n_remove)):
        cost = 2.0 * cross + diag
        cost[taken] = np.inf
        best = int(np.argmin(cost))
        removed.append(best)
        taken[best] = True
        cross += gram[best]
    return removed


def thinet_greedy(contributions: np.ndarray, n_remove: int) -> list[int]:
    """Greedy channel removal of ThiNet (Luo et al., ICCV 2017), in removal order.

    ``contributions[s, c]`` is what input channel ``c`` adds to sampled output value ``s``
    of the next layer. Starting from ``T = {}``, repeatedly add the channel ``i`` that
    minimises the reconstruction error ``sum_s (sum_{c in T + {i}} contributions[s, c])^2``
    (ties: lowest index), until ``n_remove`` channels are taken. Greedy, so not always
    the best subset of that size, but each step is the best single addition.

    >>> from surgery.criteria import thinet_greedy
    >>> thinet_greedy([[1.0, 0.0, -1.1], [0.0, 1.05, 0.0]], 2)  # 0 and 2 nearly cancel
    [0, 2]
    """
    x = np.asarray(contributions, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"contributions must be 2-D [samples, channels], got shape {x.shape}")
    return _greedy_from_gram(x.T @ x, n_remove)


def _is_thinet_consumer(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, _DENSE):
        return True
    conv2d = _classes("Conv2D")
    return (
        bool(conv2d)
        and isinstance(layer, conv2d)
        and _producer_kind(layer) == "plain"
        and getattr(layer, "groups", 1) == 1
    )


def _is_thinet_passthrough(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, _BN + _IDENTITY_AT_INFERENCE + _ELEMENTWISE_ACT + _CHANNEL_KEEPING)


def _conv_geometry(shape: Sequence[int], layer: keras.layers.Layer) -> tuple[int, ...]:
    """``(out_h, out_w, pad_top, pad_left)`` of a Conv2D on a channels-last input shape."""
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
    h, w = int(shape[1]), int(shape[2])
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if layer.padding == "same":
        oh, ow = -(-h // sh), -(-w // sw)
        ph = max((oh - 1) * sh + eh - h, 0) // 2
        pw = max((ow - 1) * sw + ew - w, 0) // 2
    elif layer.padding == "valid":
        oh, ow, ph, pw = (h - eh) // sh + 1, (w - ew) // sw + 1, 0, 0
    else:
        raise ValueError(f"thinet: padding {layer.padding!r} of layer {layer.name!r} unsupported")
    return oh, ow, ph, pw


def _thinet_inputs(x: np.ndarray, layer: keras.layers.Layer) -> np.ndarray:
    """The consumer's input, channels last."""
    x = np.asarray(x)
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        x = np.moveaxis(x, 1, -1)
    return x


def _n_positions(x: np.ndarray, layer: keras.layers.Layer) -> int:
    """How many output positions (example, location) the consumer has on input ``x``."""
    if isinstance(layer, _DENSE):
        return int(np.prod(x.shape[:-1]))
    oh, ow, _, _ = _conv_geometry(x.shape, layer)
    return int(x.shape[0]) * oh * ow


def _patches(x: np.ndarray, layer: keras.layers.Layer, idx: np.ndarray) -> np.ndarray:
    """Input windows ``(n, kh, kw, in_channels)`` of output positions ``idx`` (flattened
    example-major, as in ``output.reshape(-1, filters)``); Dense gives ``(n, 1, 1, in)``."""
    if isinstance(layer, _DENSE):
        return x.reshape(-1, x.shape[-1])[idx][:, None, None, :]
    oh, ow, ph, pw = _conv_geometry(x.shape, layer)
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
    h, w = x.shape[1], x.shape[2]
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    pad_h = max((oh - 1) * sh + eh - h - ph, 0)
    pad_w = max((ow - 1) * sw + ew - w - pw, 0)
    xp = np.pad(x, ((0, 0), (ph, pad_h), (pw, pad_w), (0, 0)))
    b, rem = np.divmod(idx, oh * ow)
    i, j = np.divmod(rem, ow)
    rows = i[:, None] * sh + np.arange(kh)[None, :] * dh
    cols = j[:, None] * sw + np.arange(kw)[None, :] * dw
    return xp[b[:, None, None], rows[:, :, None], cols[:, None, :], :]


def _consumer_kernel(layer: keras.layers.Layer) -> np.ndarray:
    """The consumer's kernel as ``(kh, kw, in_channels, filters)``."""
    k = np.asarray(layer.kernel.numpy())
    return k[None, None] if k.ndim == 2 else k


def _contribution_gram(patches: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Gram matrix ``X^T X`` of the ThiNet contributions ``X[(n, f), c]`` without always
    building ``X``.

    ``X[(n, f), c] = sum_w P[n, w, c] K[w, c, f]`` (``w`` = window offset), so
    ``G[c, d] = sum_{w, v} (P^T P)[(w, c), (v, d)] * (K K^T)[(w, c), (v, d)]``: cheaper
    than the direct product when the consumer has many filters or a 1x1 window. The
    cheaper of the two exact forms is used; the direct one runs in bounded chunks.
    """
    n, kh, kw, c = patches.shape
    f = kernel.shape[-1]
    k = kh * kw
    direct_cost = n * f * c * (k + c)
    factored_cost = (n + f) * (k * c) ** 2
    if factored_cost < direct_cost:
        p = patches.reshape(n, k * c).astype(np.float64)
        kf = kernel.reshape(k * c, f).astype(np.float64)
        return ((p.T @ p) * (kf @ kf.T)).reshape(k, c, k, c).sum(axis=(0, 2))
    kernel = kernel.astype(np.float64)
    gram = np.zeros((c, c))
    chunk = max(1, int(4_000_000 // max(1, f * c * k)))  # about 32 MB of float64 at a time
    for start in range(0, n, chunk):
        contrib = np.einsum("nhwc,hwcf->nfc", patches[start:start + chunk].astype(np.float64),
                            kernel, optimize=True)
        flat = contrib.reshape(-1, c)
        gram += flat.T @ flat
    return gram


class _Reservoir:
    """Uniform sample without replacement of at most ``size`` items from a stream: every
    offered item gets a uniform random key and the ``size`` smallest keys are kept."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size, self.rng = int(size), rng
        self.keys = np.empty(0)
        self.items: Optional[np.ndarray] = None

    def offer(self, count: int, make: Callable[[np.ndarray], np.ndarray]) -> None:
        keys = self.rng.random(count)
        k = min(self.size, count)
        idx = np.argpartition(keys, k - 1)[:k] if k < count else np.arange(count)
        items, keys = make(idx), keys[idx]
        if self.items is not None:
            items = np.concatenate([self.items, items])
            keys = np.concatenate([self.keys, keys])
        keep = np.argsort(keys)[: self.size]
        self.items, self.keys = items[keep], keys[keep]


@register_criterion("thinet", needs_data=True)
def thinet(model: keras.Model, layer_names: Sequence[str], data: Optional[Data] = None, *,
           n_locations: int = 256, max_samples: int = DEFAULT_MAX_SAMPLES,
           batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0,
           **options: Any) -> dict[str, np.ndarray]:
    """ThiNet (Luo et al., ICCV 2017): keep the channels the next layer cannot do without.

    For layer ``L``, find the next Conv2D (``groups=1``) or Dense ``C`` that consumes its
    channels, through a single-consumer chain of BatchNormalization / activation /
    dropout / pooling / padding layers (which keep channel ``c`` as channel ``c``). Then:

    1. run the model once over at most ``max_samples`` examples and draw ``n_locations``
       output positions (example, row, col) of ``C`` uniformly (a reservoir sample);
    2. for each sampled position and each filter ``f`` of ``C``, the contribution of input
       channel ``c`` is ``x_c = sum_{window} kernel[..., c, f] * patch[..., c]``, so that
       ``C``'s pre-activation output is ``sum_c x_c + bias`` (samples = positions x filters);
    3. greedily build the removed set ``T`` (:func:`thinet_greedy`): repeatedly add the
       channel minimising ``sum_samples (sum_{c in T} x_c)^2``, i.e. the change in ``C``'s
       output caused by removing ``T``, until one channel is left.

    ``s_c`` = position of ``c`` in the removal order (0 = removed first, least important;
    the last survivor gets ``channels - 1``). Layers with no such ``C`` (a fork, Add,
    Concatenate, Flatten, end of model, ...) fall back to :func:`l1`, with one
    ``logging.warning`` per call naming them.

    >>> import numpy as np
    >>> from surgery._backend import keras
    >>> from surgery.criteria import thinet
    >>> x = keras.Input((8, 8, 3)); c = keras.layers.Conv2D(4, 3, name="c")
    >>> h = keras.layers.ReLU()(c(x)); model = keras.Model(x, keras.layers.Conv2D(5, 3)(h))
    >>> k, b = c.get_weights(); k[..., 2] = 0; c.set_weights([k, b])
    >>> xs = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    >>> scores = thinet(model, ["c"], (xs, None), n_locations=64)["c"]
    >>> int(np.argmin(scores)), sorted(scores.tolist())
    (2, [0.0, 1.0, 2.0, 3.0])
    """
    _require_data("thinet", data)
    if int(n_locations) <= 0:
        raise ValueError(f"n_locations must be positive, got {n_locations!r}")
    layers = _resolve_layers(model, layer_names)
    rng = np.random.default_rng(seed)
    plans: list[tuple[keras.layers.Layer, keras.layers.Layer, Any]] = []
    fallback: list[str] = []
    for layer in layers:
        hit = _follow_chain(
            model, _producer_node(model, layer), _is_thinet_passthrough, _is_thinet_consumer)
        if hit is None or _consumer_kernel(hit[0]).shape[-2] != _n_out_channels(layer):
            fallback.append(layer.name)
            continue
        plans.append((layer, hit[0], _node_input(hit[1])))
    out: dict[str, np.ndarray] = {}
    if plans:
        probe = keras.Model(model.inputs, [t for _, _, t in plans])
        reservoirs = [_Reservoir(n_locations, rng) for _ in plans]
        for x, _ in _iter_batches(data, max_samples, batch_size):
            outs = probe(x, training=False)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            for (_, consumer, _), t, res in zip(plans, outs, reservoirs):
                xin = _thinet_inputs(t.numpy(), consumer)
                res.offer(_n_positions(xin, consumer),
                          lambda idx, xin=xin, consumer=consumer: _patches(xin, consumer, idx))
        for (layer, consumer, _), res in zip(plans, reservoirs):
            if res.items is None:
                raise ValueError("thinet: data= yielded no examples")
            kernel = _consumer_kernel(consumer)
            n_ch = kernel.shape[-2]
            gram = _contribution_gram(res.items, kernel)
            order = _greedy_from_gram(gram, n_ch - 1)
            remaining = sorted(set(range(n_ch)) - set(order))
            scores = np.empty(n_ch)
            scores[order + remaining] = np.arange(n_ch, dtype=np.float64)
            out[layer.name] = scores
    if fallback:
        logger.warning(
            "thinet: no Conv2D/Dense consumes the channels of layer(s) %s through a "
            "single-consumer chain; using l1 for them",
            ", ".join(repr(n) for n in fallback),
        )
        out.update(l1(model, fallback))
    return out
