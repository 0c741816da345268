"""CIFAR-style VGG-16 and VGG-19 with BatchNormalization, for plain-chain pruning.

Each conv is 3x3 'same' -> BatchNormalization -> ReLU; five max-pool stages halve the
input (32x32 -> 1x1); the head is Flatten -> Dense(512) -> BN -> ReLU -> Dropout ->
softmax, scaled by ``width``. Layer names: ``block{s}_conv{i}`` (+ ``_bn``/``_relu``),
``block{s}_pool``, ``fc1``, ``predictions``.
"""
from __future__ import annotations

from types import ModuleType
from typing import Optional, Sequence

from surgery._backend import keras

from ._common import (arguments_of, check_input_shape, keras_api, kernel_regularizer, scaled,
                      signature_of)

# Filters per stage; every stage ends with a 2x2 max-pool.
VGG_STAGES = {
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def _vgg(depth, input_shape, classes, width, weight_decay, dropout,
         keras_module=None) -> keras.Model:
    name = f"vgg{depth}"
    api = keras_api(keras_module)
    layers = api.layers
    shape = check_input_shape(input_shape, 32, name)
    reg = kernel_regularizer(l2=weight_decay, keras_module=api)
    inputs = api.Input(shape, name="input")
    x = inputs
    for stage, filters in enumerate(VGG_STAGES[depth], start=1):
        for i, f in enumerate(filters, start=1):
            prefix = f"block{stage}_conv{i}"
            x = layers.Conv2D(scaled(f, width), 3, padding="same", use_bias=False,
                              kernel_regularizer=reg, name=prefix)(x)
            x = layers.BatchNormalization(name=prefix + "_bn")(x)
            x = layers.ReLU(name=prefix + "_relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{stage}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(scaled(512, width), use_bias=False, kernel_regularizer=reg,
                     name="fc1")(x)
    x = layers.BatchNormalization(name="fc1_bn")(x)
    x = layers.ReLU(name="fc1_relu")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(classes, activation="softmax", kernel_regularizer=reg,
                           name="predictions")(x)
    return api.Model(inputs, outputs, name=name)


def vgg16(
    input_shape: Sequence[int] = (32, 32, 3),
    classes: int = 10,
    width: float = 1.0,
    weight_decay: float = 0.0,
    dropout: float = 0.5,
    keras_module: Optional[ModuleType] = None,
) -> keras.Model:
    """CIFAR-style VGG-16 with BatchNormalization (13 convs, 5 pools, 2 dense layers);
    ``keras_module`` is the Keras to build with (``import keras`` for Keras 3).

    Example:
        >>> model = vgg16(width=0.125)
        >>> sum(type(l).__name__ == "Conv2D" for l in model.layers)
        13
    """
    return _vgg(16, input_shape, classes, width, weight_decay, dropout, keras_module)


@signature_of(vgg16)
def vgg19(*args, **kwargs) -> keras.Model:
    """CIFAR-style VGG-19 with BatchNormalization (16 convs, 5 pools, 2 dense layers);
    ``keras_module`` is the Keras to build with (``import keras`` for Keras 3).

    Example:
        >>> model = vgg19(width=0.125)
        >>> sum(type(l).__name__ == "Conv2D" for l in model.layers)
        16
    """
    return _vgg(19, **arguments_of(vgg16, args, kwargs))
