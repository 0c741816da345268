"""Depthwise convolutions that XLA runs fast on a CPU, for the calls surgery compiles on JAX.

This module belongs to the Keras 3 adapter and owns one workaround: XLA's CPU backend runs
a depthwise convolution (a grouped convolution, one group per channel) many times slower
than the same arithmetic written as shifted multiply-adds: 8.4 ms against 0.5 ms for a
3×3 kernel on a (32, 16, 16, 48) batch on a 2-core CPU, which made a MobileNetV2's
training-mode call 4.9× slower on JAX than it needs to be (23 ms against 4.7 ms a batch of
32 at 32×32) and planning on JAX twice as slow as on TensorFlow. While
:func:`shifted_depthwise` is active, Keras 3's JAX ``depthwise_conv`` (what
``DepthwiseConv2D``, ``DepthwiseConv1D`` and ``SeparableConv2D``'s first half call) is the
sum over kernel positions of the strided input window times that position's weights; it
agrees with XLA's convolution to float round-off (4.8e-7 on inputs in [0, 1]).
:mod:`surgery.engine.compiled` traces its jitted calls under it; nothing else does, so a
user's own training and inference keep Keras's operation.
"""
from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def shifted_depthwise() -> Iterator[None]:
    """Within the block, Keras 3's JAX ``depthwise_conv`` is :func:`depthwise_conv` when
    JAX runs on a CPU (elsewhere XLA's grouped convolution is fast and is kept)."""
    import jax  # lazy: an optional backend
    from keras.src.backend.jax import nn  # lazy: JAX's ops exist only with JAX installed

    if jax.default_backend() != "cpu" or nn.depthwise_conv is depthwise_conv:
        yield
        return
    original, nn.depthwise_conv = nn.depthwise_conv, depthwise_conv
    try:
        yield
    finally:
        nn.depthwise_conv = original


def depthwise_conv(inputs, kernel, strides=1, padding="valid", data_format=None,
                   dilation_rate=1):
    """``keras.ops.depthwise_conv`` on JAX as a sum of shifted, strided windows of the
    (padded) input, each times one kernel position's weights (``kernel``:
    ``spatial + (channels, multiplier)``; output channel ``c * multiplier + m``, as Keras)."""
    import jax.numpy as jnp  # lazy: an optional backend
    from jax import lax  # lazy: an optional backend
    from keras.src.backend import standardize_data_format  # lazy: with the backend above

    channels_first = standardize_data_format(data_format) == "channels_first"
    x = jnp.asarray(inputs)
    if channels_first:
        x = jnp.moveaxis(x, 1, -1)
    kernel = jnp.asarray(kernel)
    rank = x.ndim - 2
    sizes, (channels, multiplier) = kernel.shape[:rank], kernel.shape[rank:]
    strides, dilation = _per_axis(strides, rank), _per_axis(dilation_rate, rank)
    spans = [(k - 1) * d + 1 for k, d in zip(sizes, dilation)]
    pads = lax.padtype_to_pads(x.shape[1:-1], spans, strides, padding.upper())
    out_sizes = [(n + lo + hi - span) // step + 1 for n, (lo, hi), span, step
                 in zip(x.shape[1:-1], pads, spans, strides)]
    x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    if multiplier > 1:
        x = jnp.repeat(x, multiplier, axis=-1)
    weights = jnp.reshape(kernel, tuple(sizes) + (channels * multiplier,))
    # sum in float32 at least, as XLA's convolution does for float16 / bfloat16 inputs
    dtype = jnp.result_type(x.dtype, weights.dtype)
    summed = jnp.promote_types(dtype, jnp.float32)
    x, weights = x.astype(summed), weights.astype(summed)
    out = None
    for position in itertools.product(*(range(k) for k in sizes)):
        window = tuple(slice(p * d, p * d + (n - 1) * step + 1, step)
                       for p, d, n, step in zip(position, dilation, out_sizes, strides))
        term = x[(slice(None),) + window + (slice(None),)] * weights[position]
        out = term if out is None else out + term
    out = out.astype(dtype)
    return jnp.moveaxis(out, -1, 1) if channels_first else out


def _per_axis(value, rank: int) -> tuple:
    return (int(value),) * rank if isinstance(value, int) else tuple(int(v) for v in value)
