"""ThiNet (Luo et al., ICCV 2017): ``thinet`` and its greedy core ``thinet_greedy``.

It owns everything ThiNet needs beyond the shared graph and data helpers: finding the
Conv2D/Dense that consumes a layer's channels, the Conv2D window geometry and patch
extraction at sampled output positions, the Gram matrix of per-channel contributions,
the reservoir sample of positions and the greedy removal order (:func:`thinet_greedy`).
Layers without such a consumer fall back to ``l1``.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np

from surgery._backend import keras
from surgery.pruning.criteria._data import _iter_batches, _require_data
from surgery.engine.graph import ModelGraph, resolve
from surgery.pruning.criteria._forward import forward
from surgery.pruning.criteria._graph import (
    _call, _follow_chain, _keeps_channels, _linear_window, _n_out_channels, _resolve_layers,
)
from surgery.pruning.criteria._registry import (
    DEFAULT_BATCH_SIZE, DEFAULT_MAX_SAMPLES, Data, logger, register_criterion,
)
from surgery.pruning.criteria.weights import l1

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

    >>> from surgery.pruning.criteria import thinet_greedy
    >>> thinet_greedy([[1.0, 0.0, -1.1], [0.0, 1.05, 0.0]], 2)  # 0 and 2 nearly cancel
    [0, 2]
    """
    x = np.asarray(contributions, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"contributions must be 2-D [samples, channels], got shape {x.shape}")
    return _greedy_from_gram(x.T @ x, n_remove)


def _window_geometry(shape: Sequence[int], window: dict) -> tuple[int, ...]:
    """``(out_h, out_w, pad_top, pad_left)`` of a sliding window on a channels-last input."""
    kh, kw = window["kernel"].shape[:2]
    (sh, sw), (dh, dw) = window["strides"], window["dilation"]
    h, w = int(shape[1]), int(shape[2])
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if window["padding"] == "same":
        oh, ow = -(-h // sh), -(-w // sw)
        ph = max((oh - 1) * sh + eh - h, 0) // 2
        pw = max((ow - 1) * sw + ew - w, 0) // 2
    elif window["padding"] == "valid":
        oh, ow, ph, pw = (h - eh) // sh + 1, (w - ew) // sw + 1, 0, 0
    else:
        raise ValueError(f"thinet: padding {window['padding']!r} unsupported")
    return oh, ow, ph, pw


def _n_positions(x: np.ndarray, window: dict) -> int:
    """How many output positions (example, location) the consumer has on input ``x``."""
    if window.get("dense"):
        return int(np.prod(x.shape[:-1]))
    oh, ow, _, _ = _window_geometry(x.shape, window)
    return int(x.shape[0]) * oh * ow


def _patches(x: np.ndarray, window: dict, idx: np.ndarray) -> np.ndarray:
    """Input windows ``(n, kh, kw, in_channels)`` of output positions ``idx`` (flattened
    example-major, as in ``output.reshape(-1, filters)``); Dense gives ``(n, 1, 1, in)``."""
    if window.get("dense"):
        return x.reshape(-1, x.shape[-1])[idx][:, None, None, :]
    oh, ow, ph, pw = _window_geometry(x.shape, window)
    kh, kw = window["kernel"].shape[:2]
    (sh, sw), (dh, dw) = window["strides"], window["dilation"]
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
    >>> from surgery.pruning.criteria import thinet
    >>> x = keras.Input((8, 8, 3)); c = keras.layers.Conv2D(4, 3, name="c")
    >>> h = keras.layers.ReLU()(c(x)); model = keras.Model(x, keras.layers.Conv2D(5, 3)(h))
    >>> k, b = c.get_weights(); k[..., 2] = 0; c.set_weights([k, b])
    >>> xs = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    >>> scores = thinet(model, ["c"], (xs, None), n_locations=64)["c"]
    >>> int(np.argmin(scores)), sorted(scores.tolist())
    (2, [0.0, 1.0, 2.0, 3.0])
    """
    graph = resolve(model, "thinet")
    _require_data("thinet", data)
    if int(n_locations) <= 0:
        raise ValueError(f"n_locations must be positive, got {n_locations!r}")
    layers = _resolve_layers(graph, layer_names)
    rng = np.random.default_rng(seed)
    plans: list[tuple[Any, dict, Any]] = []
    fallback: list[str] = []
    for layer in layers:
        hit = _follow_chain(graph, _call(graph, layer), _keeps_channels,
                            lambda info: _linear_window(info) is not None)
        window = None if hit is None else _linear_window(hit.info)
        if window is None or window["kernel"].shape[-2] != _n_out_channels(graph, layer):
            fallback.append(layer.name)
            continue
        plans.append((layer, window, hit.inputs[0]))
    out: dict[str, np.ndarray] = {}
    if plans:
        probe = graph.submodel([t for _, _, t in plans])
        reservoirs = [_Reservoir(n_locations, rng) for _ in plans]
        for x, _ in _iter_batches(data, max_samples, batch_size):
            for (_, window, _), xin, res in zip(plans, forward(graph, probe, x), reservoirs):
                res.offer(_n_positions(xin, window),
                          lambda idx, xin=xin, window=window: _patches(xin, window, idx))
        for (layer, window, _), res in zip(plans, reservoirs):
            if res.items is None:
                raise ValueError("thinet: data= yielded no examples")
            kernel = window["kernel"]
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
        out.update(l1(graph, fallback))
    return out
