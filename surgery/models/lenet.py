"""LeNet-5: the smallest model in the zoo, for quick end-to-end runs on digit images.

Two 5x5 conv + max-pool stages (6 and 16 filters) and three dense layers (120, 84,
classes), with ReLU instead of the original tanh/sigmoid. Layer names: ``conv1``,
``pool1``, ``conv2``, ``pool2``, ``flatten``, ``fc1``, ``fc2``, ``predictions``.
"""
from __future__ import annotations

from types import ModuleType
from typing import Optional, Sequence

from surgery._backend import keras

from ._common import check_input_shape, keras_api, kernel_regularizer, scaled


def lenet5(
    input_shape: Sequence[int] = (32, 32, 1),
    classes: int = 10,
    width: float = 1.0,
    weight_decay: float = 0.0,
    keras_module: Optional[ModuleType] = None,
) -> keras.Model:
    """LeNet-5 (conv 6 -> pool -> conv 16 -> pool -> dense 120 -> dense 84 -> softmax).

    Args:
        input_shape: ``(height, width, channels)``, at least 12x12 (32x32 is classic).
        classes: number of softmax outputs.
        width: multiplier on every conv and hidden dense width.
        weight_decay: L2 kernel regulariser factor on every conv and dense layer.
        keras_module: the Keras to build with (``import keras`` for Keras 3; default
            tf-keras).

    Example:
        >>> lenet5().count_params()
        61706
    """
    shape = check_input_shape(input_shape, 12, "lenet5")
    api = keras_api(keras_module)
    layers = api.layers
    reg = kernel_regularizer(l2=weight_decay, keras_module=api)
    inputs = api.Input(shape, name="input")
    x = layers.Conv2D(scaled(6, width), 5, activation="relu", kernel_regularizer=reg,
                      name="conv1")(inputs)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(scaled(16, width), 5, activation="relu", kernel_regularizer=reg,
                      name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(scaled(120, width), activation="relu", kernel_regularizer=reg,
                     name="fc1")(x)
    x = layers.Dense(scaled(84, width), activation="relu", kernel_regularizer=reg,
                     name="fc2")(x)
    outputs = layers.Dense(classes, activation="softmax", kernel_regularizer=reg,
                           name="predictions")(x)
    return api.Model(inputs, outputs, name="lenet5")
