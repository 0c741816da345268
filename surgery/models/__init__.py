"""The model zoo that surgery is developed and tested on, built like ``keras.applications``.

Every entry is a function returning a fresh, uncompiled, functional ``keras.Model`` with
keyword arguments for input shape, classes, width and regularisation. ``MODELS`` maps a
name to that function and ``get_model`` looks one up by name (for the CLIs).
"""
from __future__ import annotations

from typing import Callable, Dict

from surgery._backend import keras

from .lenet import lenet5
from .mobilenet_v2 import mobilenet_v2, mobilenet_v2_res, mobilenet_v2_vgg
from .resnet import resnet18
from .vgg import vgg16, vgg19

MODELS: Dict[str, Callable[..., keras.Model]] = {
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v2_res": mobilenet_v2_res,
    "mobilenet_v2_vgg": mobilenet_v2_vgg,
    "lenet5": lenet5,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "resnet18": resnet18,
}


def get_model(name: str, **kwargs) -> keras.Model:
    """Build the model registered as ``name``, passing ``kwargs`` to its function.

    Raises:
        ValueError: ``name`` is not in ``MODELS``; the message lists the known names.

    Example:
        >>> model = get_model("lenet5", input_shape=(32, 32, 1), classes=10)
        >>> model.output_shape
        (None, 10)
    """
    try:
        build = MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise ValueError(f"unknown model {name!r}; known models: {known}") from None
    return build(**kwargs)


__all__ = ["MODELS", "get_model", "lenet5", "mobilenet_v2", "mobilenet_v2_res",
           "mobilenet_v2_vgg", "resnet18", "vgg16", "vgg19"]
