"""Child of tests/test_xla_depthwise.py, run with ``KERAS_BACKEND=jax``: the shifted form of
depthwise convolution against Keras's own, op by op and inside a compiled model call.

Prints ``RESULT {json}``: for each case, the largest difference between
``keras.ops.depthwise_conv`` and :func:`surgery.engine.xla_depthwise.depthwise_conv`, and
the largest output; for a small model with Depthwise/Separable convolutions, the difference
between its eager call and :func:`surgery.engine.compiled.compiled_call`, whether the
compiled call traced the shifted form, and whether Keras's operation is back afterwards.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras  # noqa: E402  (Keras 3 first)
import numpy as np  # noqa: E402

from keras.src.backend.jax import nn  # noqa: E402
from surgery.engine import xla_depthwise  # noqa: E402
from surgery.engine.compiled import compiled_call  # noqa: E402
from surgery.engine.graph import ModelGraph  # noqa: E402

CASES = [  # (input shape, kernel size, strides, padding, dilation, multiplier, data format)
    ((2, 11, 13, 5), (3, 3), 1, "same", 1, 1, "channels_last"),
    ((2, 11, 13, 5), (3, 3), 2, "same", 1, 1, "channels_last"),
    ((2, 11, 13, 5), (5, 3), (2, 1), "valid", 1, 2, "channels_last"),
    ((2, 11, 13, 5), (3, 3), 1, "same", 2, 3, "channels_last"),
    ((2, 12, 12, 4), (3, 3), 3, "valid", 1, 1, "channels_last"),
    ((2, 5, 11, 13), (3, 3), 2, "same", 1, 2, "channels_first"),
    ((3, 17, 6), (4,), 2, "same", 1, 2, "channels_last"),
]
#: a mixed-precision case: bfloat16 in and out, summed in float32 as XLA's convolution does
LOW_PRECISION = ((2, 9, 9, 8), (3, 3), 1, "same", 1, 1, "channels_last")


def ops_cases(rng) -> list:
    out = []
    for shape, size, strides, padding, dilation, mult, fmt in CASES:
        x = rng.normal(size=shape).astype("float32")
        channels = shape[1] if fmt == "channels_first" else shape[-1]
        k = rng.normal(size=size + (channels, mult)).astype("float32")
        ref = np.asarray(keras.ops.depthwise_conv(x, k, strides, padding, fmt, dilation))
        got = np.asarray(xla_depthwise.depthwise_conv(x, k, strides, padding, fmt, dilation))
        out.append(dict(case=repr((shape, size, strides, padding, dilation, mult, fmt)),
                        shape_ok=ref.shape == got.shape,
                        diff=float(np.max(np.abs(ref - got))) if ref.shape == got.shape else None,
                        scale=float(np.max(np.abs(ref)))))
    shape, size, strides, padding, dilation, mult, fmt = LOW_PRECISION
    x = rng.normal(size=shape).astype("float32")
    k = rng.normal(size=size + (shape[-1], mult)).astype("float32")
    ref = np.asarray(keras.ops.depthwise_conv(x, k, strides, padding, fmt, dilation))
    x16, k16 = (keras.ops.cast(a, "bfloat16") for a in (x, k))
    got = xla_depthwise.depthwise_conv(x16, k16, strides, padding, fmt, dilation)
    out.append(dict(case="bfloat16 " + repr(LOW_PRECISION), shape_ok=ref.shape == got.shape,
                    dtype=str(got.dtype), scale=float(np.max(np.abs(ref))),
                    diff=float(np.max(np.abs(ref - np.asarray(got, "float32"))))))
    return out


def model_case(rng) -> dict:
    layers = keras.layers
    x = keras.Input((16, 16, 3))
    h = layers.Conv2D(8, 1, name="c1")(x)
    h = layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, name="dw")(h)
    h = layers.BatchNormalization(name="bn")(h)
    h = layers.SeparableConv2D(6, 3, padding="valid", name="sep")(h)
    model = keras.Model(x, layers.GlobalAveragePooling2D()(h))
    data = rng.normal(size=(4, 16, 16, 3)).astype("float32")
    traced = []
    original = xla_depthwise.depthwise_conv

    def spy(*args, **kwargs):
        traced.append(1)
        return original(*args, **kwargs)

    xla_depthwise.depthwise_conv = spy
    try:
        stock = nn.depthwise_conv
        compiled = compiled_call(ModelGraph(model), training=False)(data)[0]
    finally:
        xla_depthwise.depthwise_conv = original
    eager = np.asarray(model(data, training=False))
    return dict(diff=float(np.max(np.abs(eager - compiled))), scale=float(np.max(np.abs(eager))),
                traced_shifted=len(traced), restored=nn.depthwise_conv is stock)


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    print("RESULT " + json.dumps(dict(backend=keras.backend.backend(), ops=ops_cases(rng),
                                      model=model_case(rng))))
