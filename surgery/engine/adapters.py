"""Choosing the graph adapter for a model: which Keras generation built it.

This module owns :func:`adapter_for` and :func:`same_adapter`. A tf-keras (Keras 2) model
gets :mod:`surgery.engine.keras2`; a Keras 3 model (any backend) gets
:mod:`surgery.engine.keras3`, imported only then, so a Keras 2 process never loads
Keras 3. Anything else is refused with a :class:`~surgery.errors.SurgeryError`, as is a
call that mixes models of the two generations. :func:`is_keras3` answers the one question
the layers above ask about a generation.
"""
from __future__ import annotations

import sys
from types import ModuleType

from surgery._backend import keras as keras2_api
from surgery.engine import keras2
from surgery.errors import SurgeryError


def _is_keras3(obj) -> bool:
    keras3 = sys.modules.get("keras")
    if keras3 is None or not str(getattr(keras3, "__version__", "")).startswith("3"):
        return False
    return isinstance(obj, keras3.Model)


def adapter_for(model) -> ModuleType:
    """The graph adapter module for ``model`` (``keras2`` or ``keras3``).

    >>> from surgery._backend import keras
    >>> x = keras.Input((4,)); m = keras.Model(x, keras.layers.Dense(2)(x))
    >>> adapter_for(m).__name__
    'surgery.engine.keras2'
    """
    if isinstance(model, keras2_api.Model):
        return keras2
    if _is_keras3(model):
        from surgery.engine import keras3  # lazy: a Keras 2 process never imports Keras 3

        return keras3
    raise SurgeryError(
        f"expected a keras.Model (tf-keras / Keras 2, or Keras 3), got "
        f"{type(model).__module__}.{type(model).__name__}; pass the model itself "
        "(a functional or Sequential keras.Model).")


def is_keras3(model) -> bool:
    """Whether Keras 3 (any backend) built ``model``; else tf-keras (refuses non-models)."""
    return adapter_for(model) is not keras2


def keras_of(model) -> ModuleType:
    """The Keras module (tf-keras or Keras 3) that built ``model``."""
    return adapter_for(model).KERAS


def same_adapter(*models) -> ModuleType:
    """The one adapter of several models; refuses models of both Keras generations."""
    adapters = [adapter_for(m) for m in models]
    if any(a is not adapters[0] for a in adapters[1:]):
        raise SurgeryError(
            "these models were built by different Keras generations (tf-keras and Keras "
            "3); pass models of one generation — rebuild one of them with the other "
            "Keras, or save it as .keras/.h5 and load it with the same Keras.")
    return adapters[0]
