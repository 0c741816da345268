"""The seed project's MobileNetV2 and its two variants, the models surgery is tested on first.

``mobilenet_v2`` is MobileNetV2 (inverted residual blocks: expand 1x1 conv -> BN -> ReLU6
-> 3x3 DepthwiseConv2D -> BN -> ReLU6 -> project 1x1 conv -> BN) as the seed project wrote
it: grayscale 100x100 input, 4 classes, ReLU6 as ``layers.ReLU(6.)``, an L1 kernel
regulariser on every convolution, and residual shortcuts written with Python ``x + y``, so
they become ``TFOpLambda`` (``tf.__operators__.add``) layers rather than ``Add`` layers.
That is deliberate: the surgery code must handle it. ``mobilenet_v2_res`` replaces every
pw·dw·pw block with a dense 3x3 conv (to the expanded width) + BN + ReLU6 + 1x1 conv + BN,
keeping the shortcuts; ``mobilenet_v2_vgg`` is the same without shortcuts.

Layer names follow ``keras.applications``: ``Conv1``/``bn_Conv1``/``Conv1_relu`` for the
stem, ``block_{i}_{expand,depthwise,project}`` (+ ``_BN``/``_relu``) or
``block_{i}_{conv,project}`` in the variants, ``block_{i}_add`` for shortcuts, ``Conv_1``
for the last 1x1 conv, ``global_average_pooling`` and ``predictions``.
"""
from __future__ import annotations

from types import ModuleType
from typing import Optional, Sequence

from surgery._backend import keras
from surgery.engine import keras2

from ._common import (arguments_of, check_input_shape, keras_api, kernel_regularizer,
                      make_divisible, signature_of)

# (expansion t, output channels c, repeats n, first stride s), from the MobileNetV2 paper.
INVERTED_RESIDUAL_SETTINGS: tuple = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

_BN = dict(epsilon=1e-3, momentum=0.999)


def _conv_bn_relu(layers, x, filters, kernel, stride, reg, name, bn_name=None, relu_name=None):
    x = layers.Conv2D(
        filters, kernel, strides=stride, padding="same", use_bias=False,
        kernel_regularizer=reg, name=name,
    )(x)
    x = layers.BatchNormalization(**_BN, name=bn_name or f"{name}_BN")(x)
    return layers.ReLU(6.0, name=relu_name or f"{name}_relu")(x)


def _conv_bn(layers, x, filters, kernel, reg, name):
    x = layers.Conv2D(
        filters, kernel, padding="same", use_bias=False, kernel_regularizer=reg, name=name
    )(x)
    return layers.BatchNormalization(**_BN, name=f"{name}_BN")(x)


def _pw_dw_pw(layers, x, block_id, expansion, out_channels, stride, reg):
    """Inverted residual body (no shortcut): [expand] -> depthwise -> project."""
    prefix = f"block_{block_id}_"
    in_channels = x.shape[-1]
    if expansion != 1:
        x = _conv_bn_relu(layers, x, expansion * in_channels, 1, 1, reg, prefix + "expand")
    x = layers.DepthwiseConv2D(
        3, strides=stride, padding="same", use_bias=False,
        depthwise_regularizer=reg, name=prefix + "depthwise",
    )(x)
    x = layers.BatchNormalization(**_BN, name=prefix + "depthwise_BN")(x)
    x = layers.ReLU(6.0, name=prefix + "depthwise_relu")(x)
    return _conv_bn(layers, x, out_channels, 1, reg, prefix + "project")


def _conv_conv(layers, x, block_id, expansion, out_channels, stride, reg):
    """The variants' body: dense 3x3 conv to the expanded width -> 1x1 project."""
    prefix = f"block_{block_id}_"
    x = _conv_bn_relu(layers, x, expansion * x.shape[-1], 3, stride, reg, prefix + "conv")
    return _conv_bn(layers, x, out_channels, 1, reg, prefix + "project")


def _block(layers, x, block_id, expansion, out_channels, stride, reg, body, shortcuts):
    inputs = x
    x = body(layers, x, block_id, expansion, out_channels, stride, reg)
    if shortcuts and stride == 1 and inputs.shape[-1] == out_channels:
        x = inputs + x  # deliberately a TFOpLambda, not layers.Add (see module docstring)
        if layers is keras.layers:  # Keras 2 (Keras 3: an unnamed keras.ops Add operation)
            keras2.name_op(x, f"block_{block_id}_add")
    return x


def _build(
    name: str,
    body,
    shortcuts: bool,
    input_shape: Sequence[int],
    classes: int,
    alpha: float,
    l1: float,
    weight_decay: float,
    last_channels: Optional[int],
    dropout: float,
    settings: Sequence[Sequence[int]],
    keras_module: Optional[ModuleType] = None,
) -> keras.Model:
    api = keras_api(keras_module)
    layers = api.layers
    shape = check_input_shape(input_shape, 8, name)
    if alpha <= 0:
        raise ValueError(f"{name}: alpha must be > 0, got {alpha}")
    reg = kernel_regularizer(l1=l1, l2=weight_decay, keras_module=api)
    inputs = api.Input(shape, name="input")
    x = _conv_bn_relu(
        layers, inputs, make_divisible(32 * alpha), 3, 2, reg, "Conv1", "bn_Conv1", "Conv1_relu"
    )
    block_id = 0
    for expansion, channels, repeats, first_stride in settings:
        out_channels = make_divisible(channels * alpha)
        for i in range(repeats):
            stride = first_stride if i == 0 else 1
            x = _block(layers, x, block_id, expansion, out_channels, stride, reg, body, shortcuts)
            block_id += 1
    if last_channels is None:
        last_channels = make_divisible(1280 * alpha) if alpha > 1.0 else 1280
    x = _conv_bn_relu(layers, x, last_channels, 1, 1, reg, "Conv_1", "Conv_1_bn", "out_relu")
    x = layers.GlobalAveragePooling2D(name="global_average_pooling")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(
        classes, activation="softmax",
        kernel_regularizer=kernel_regularizer(l2=weight_decay, keras_module=api),
        name="predictions",
    )(x)
    return api.Model(inputs, outputs, name=name)


def mobilenet_v2(
    input_shape: Sequence[int] = (100, 100, 1),
    classes: int = 4,
    alpha: float = 1.0,
    l1: float = 1e-4,
    weight_decay: float = 0.0,
    last_channels: Optional[int] = None,
    dropout: float = 0.0,
    settings: Sequence[Sequence[int]] = INVERTED_RESIDUAL_SETTINGS,
    keras_module: Optional[ModuleType] = None,
) -> keras.Model:
    """The seed project's MobileNetV2 (pw·dw·pw blocks, ``x + y`` shortcuts, ReLU6, L1).

    Args:
        input_shape: ``(height, width, channels)``.
        classes: number of softmax outputs.
        alpha: width multiplier; channel counts are rounded to multiples of 8.
        l1: L1 kernel regulariser factor on every conv (0 disables it).
        weight_decay: L2 kernel regulariser factor on every conv and the classifier.
        last_channels: width of the last 1x1 conv (default 1280, scaled when alpha > 1).
        dropout: dropout rate before the classifier (0 = no Dropout layer).
        settings: the ``(t, c, n, s)`` inverted-residual table; a shorter table makes a
            smaller model for tests.
        keras_module: the Keras to build with (``import keras`` for Keras 3; default
            tf-keras).

    Example:
        >>> model = mobilenet_v2(input_shape=(32, 32, 3), classes=10, alpha=0.35)
        >>> model.get_layer("block_2_add").__class__.__name__
        'TFOpLambda'
    """
    return _build(
        "mobilenet_v2", _pw_dw_pw, True, input_shape, classes, alpha, l1, weight_decay,
        last_channels, dropout, settings, keras_module,
    )


@signature_of(mobilenet_v2)
def mobilenet_v2_res(*args, **kwargs) -> keras.Model:
    """MobileNetV2 with each pw·dw·pw block replaced by 3x3 conv + 1x1 conv, with shortcuts.

    Arguments as in :func:`mobilenet_v2`.

    Example:
        >>> model = mobilenet_v2_res(input_shape=(32, 32, 1), alpha=0.35)
        >>> model.get_layer("block_1_conv").kernel_size
        (3, 3)
    """
    return _build("mobilenet_v2_res", _conv_conv, True,
                  **arguments_of(mobilenet_v2, args, kwargs))


@signature_of(mobilenet_v2)
def mobilenet_v2_vgg(*args, **kwargs) -> keras.Model:
    """Like :func:`mobilenet_v2_res` but without any shortcut: a plain chain of convs.

    Arguments as in :func:`mobilenet_v2`.

    Example:
        >>> model = mobilenet_v2_vgg(input_shape=(32, 32, 1), alpha=0.35)
        >>> any("add" in layer.name for layer in model.layers)
        False
    """
    return _build("mobilenet_v2_vgg", _conv_conv, False,
                  **arguments_of(mobilenet_v2, args, kwargs))
