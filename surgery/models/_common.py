"""Small helpers shared by the model families: channel rounding, kernel regularisers, and
one family member's signature lent to another.

Every model function in this package builds its layers through these helpers so that
width multipliers round the same way and regularisers are attached the same way.
"""
from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any, Callable, Optional

from surgery._backend import keras


def signature_of(template: Callable) -> Callable:
    """Decorator: a model function takes ``template``'s arguments and defaults (as
    ``keras.applications.VGG19`` takes ``VGG16``'s); it reads them with
    :func:`arguments_of`.

    >>> def base(input_shape=(8, 8, 1), classes=4): ...
    >>> @signature_of(base)
    ... def other(*args, **kwargs):
    ...     return arguments_of(base, args, kwargs)
    >>> str(inspect.signature(other)), other(classes=2)
    ('(input_shape=(8, 8, 1), classes=4)', {'input_shape': (8, 8, 1), 'classes': 2})
    """
    def decorate(fn: Callable) -> Callable:
        fn.__signature__ = inspect.signature(template)
        return fn
    return decorate


def arguments_of(template: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    """``args`` and ``kwargs`` bound to ``template``'s signature, defaults filled in."""
    bound = inspect.signature(template).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without losing more than 10 %.

    This is the rounding rule of the MobileNet papers and ``keras.applications``.

    Example:
        >>> make_divisible(32 * 0.35)
        16
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def scaled(channels: int, width: float) -> int:
    """Scale a channel count by a width multiplier, keeping at least one channel.

    Example:
        >>> scaled(64, 0.25)
        16
    """
    return max(1, int(round(channels * width)))


def keras_api(keras_module: Optional[ModuleType] = None) -> ModuleType:
    """The Keras a model function builds with: ``keras_module`` (e.g. ``import keras``,
    Keras 3) or, by default, tf-keras (Keras 2). One definition serves both generations.

    Example:
        >>> keras_api().__name__
        'tf_keras'
    """
    return keras if keras_module is None else keras_module


def kernel_regularizer(
    l1: float = 0.0, l2: float = 0.0, keras_module: Optional[ModuleType] = None
) -> Optional[keras.regularizers.Regularizer]:
    """Return ``L1``, ``L2``, ``L1L2`` or ``None`` for the given penalty factors.

    Example:
        >>> type(kernel_regularizer(l1=1e-4)).__name__
        'L1'
    """
    if l1 < 0 or l2 < 0:
        raise ValueError(f"regulariser factors must be >= 0, got l1={l1}, l2={l2}")
    regularizers = keras_api(keras_module).regularizers
    if l1 and l2:
        return regularizers.L1L2(l1=l1, l2=l2)
    if l1:
        return regularizers.L1(l1)
    if l2:
        return regularizers.L2(l2)
    return None


def check_input_shape(input_shape, min_size: int, model_name: str) -> tuple:
    """Validate an ``(height, width, channels)`` input shape and return it as a tuple."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3:
        raise ValueError(
            f"{model_name}: input_shape must be (height, width, channels), got {input_shape}"
        )
    if min(shape[:2]) < min_size or shape[2] < 1:
        raise ValueError(
            f"{model_name}: input_shape {shape} is too small; height and width must be "
            f">= {min_size} and channels >= 1"
        )
    return shape
