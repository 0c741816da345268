"""CIFAR-style ResNet-18: basic residual blocks joined with ``layers.Add``.

A 3x3 stem conv (no max-pool, as for 32x32 inputs), four stages of two basic blocks
(64, 128, 256, 512 filters times ``width``; stride 2 at the start of stages 2-4), global
average pooling and a softmax classifier. A block is conv3x3 -> BN -> ReLU -> conv3x3 -> BN,
added to the shortcut (identity, or 1x1 conv + BN when the shape changes), then ReLU.
Layer names: ``stage{s}_block{b}_{conv1,bn1,relu1,conv2,bn2,add,out}`` and
``..._shortcut_conv``/``_shortcut_bn``.
"""
from __future__ import annotations

from types import ModuleType
from typing import Optional, Sequence

from surgery._backend import keras

from ._common import check_input_shape, keras_api, kernel_regularizer, scaled

RESNET18_STAGES = ((64, 2), (128, 2), (256, 2), (512, 2))


def _conv(layers, filters, kernel, stride, reg, name):
    return layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                         kernel_regularizer=reg, name=name)


def _basic_block(layers, x, filters, stride, reg, prefix):
    shortcut = x
    y = _conv(layers, filters, 3, stride, reg, prefix + "_conv1")(x)
    y = layers.BatchNormalization(name=prefix + "_bn1")(y)
    y = layers.ReLU(name=prefix + "_relu1")(y)
    y = _conv(layers, filters, 3, 1, reg, prefix + "_conv2")(y)
    y = layers.BatchNormalization(name=prefix + "_bn2")(y)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv(layers, filters, 1, stride, reg, prefix + "_shortcut_conv")(x)
        shortcut = layers.BatchNormalization(name=prefix + "_shortcut_bn")(shortcut)
    y = layers.Add(name=prefix + "_add")([shortcut, y])
    return layers.ReLU(name=prefix + "_out")(y)


def resnet18(
    input_shape: Sequence[int] = (32, 32, 3),
    classes: int = 10,
    width: float = 1.0,
    weight_decay: float = 0.0,
    keras_module: Optional[ModuleType] = None,
) -> keras.Model:
    """CIFAR-style ResNet-18 (8 basic blocks, ``layers.Add`` shortcuts).

    Args:
        input_shape: ``(height, width, channels)``, at least 8x8.
        classes: number of softmax outputs.
        width: multiplier on every conv's filters.
        weight_decay: L2 kernel regulariser factor on every conv and the classifier.
        keras_module: the Keras to build with (``import keras`` for Keras 3; default
            tf-keras).

    Example:
        >>> model = resnet18(width=0.125)
        >>> sum(type(l).__name__ == "Add" for l in model.layers)
        8
    """
    shape = check_input_shape(input_shape, 8, "resnet18")
    api = keras_api(keras_module)
    layers = api.layers
    reg = kernel_regularizer(l2=weight_decay, keras_module=api)
    inputs = api.Input(shape, name="input")
    x = _conv(layers, scaled(64, width), 3, 1, reg, "stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for stage, (filters, blocks) in enumerate(RESNET18_STAGES, start=1):
        for block in range(1, blocks + 1):
            stride = 2 if stage > 1 and block == 1 else 1
            x = _basic_block(layers, x, scaled(filters, width), stride, reg,
                             f"stage{stage}_block{block}")
    x = layers.GlobalAveragePooling2D(name="global_average_pooling")(x)
    outputs = layers.Dense(classes, activation="softmax", kernel_regularizer=reg,
                           name="predictions")(x)
    return api.Model(inputs, outputs, name="resnet18")
