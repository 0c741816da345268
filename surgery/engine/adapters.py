"""Choosing the graph adapter for a model: which Keras generation built it.

This module owns :func:`adapter_for`, and what both adapters share: :func:`carried`, how
they copy a layer that no cut touches, and :func:`input_roles`, which call argument each
tensor input of a call is. A tf-keras (Keras 2) model gets
:mod:`surgery.engine.keras2`; a Keras 3 model (any backend) gets
:mod:`surgery.engine.keras3`, imported only then, so a Keras 2 process never loads
Keras 3. Anything else is refused with a :class:`~surgery.errors.SurgeryError`, as is a
call that mixes models of the two generations (:func:`same_adapter`).
"""
from __future__ import annotations

import inspect
import logging
import sys
from types import ModuleType
from typing import Callable, Sequence

from surgery.errors import SurgeryError

logger = logging.getLogger(__name__)


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
    from surgery._backend import keras as keras2_api

    if isinstance(model, keras2_api.Model):
        from surgery.engine import keras2
        return keras2
    if _is_keras3(model):
        from surgery.engine import keras3
        return keras3
    raise SurgeryError(
        f"expected a keras.Model (tf-keras / Keras 2, or Keras 3), got "
        f"{type(model).__module__}.{type(model).__name__}; pass the model itself "
        "(a functional or Sequential keras.Model).")


def same_adapter(*models) -> ModuleType:
    """The one adapter of several models; refuses models of both Keras generations."""
    adapters = [adapter_for(m) for m in models]
    if any(a is not adapters[0] for a in adapters[1:]):
        raise SurgeryError(
            "these models were built by different Keras generations (tf-keras and Keras "
            "3); pass models of one generation — rebuild one of them with the other "
            "Keras, or save it as .keras/.h5 and load it with the same Keras.")
    return adapters[0]


def carried(layer, new_layer: Callable):
    """A copy of a layer that no cut touches, for a rebuilt model: ``new_layer(layer)``, a
    fresh layer from its config (its weights are set later), or, when its config cannot
    rebuild it (keras-hub's ``ViTPatchingAndEmbedding``, a custom layer without a complete
    ``get_config``), the layer object itself, carried over as it is and shared, weights
    included, with the input model."""
    try:
        new = new_layer(layer)
        if new.name == layer.name:
            return new
        err = f"its config does not keep its name '{layer.name}'"  # an incomplete config
    except Exception as error:  # noqa: BLE001 — any failure to rebuild: carry it over
        err = error
    logger.warning("layer '%s' (%s) cannot be rebuilt from its config (%s); the pruned "
                   "model shares it, weights included, with the input model",
                   layer.name, type(layer).__name__, err)
    return layer


def input_roles(layer, args: Sequence, kwargs: dict, inputs: Sequence,
                flatten: Callable) -> list[str]:
    """The call parameter each of a call's tensor ``inputs`` was passed as (``"query"``,
    ``"value"``, ``"attention_mask"`` for ``MultiHeadAttention``), in the order Keras
    lists them: positional arguments first, then keyword arguments by sorted name.
    ``flatten`` is the generation's ``tree.flatten``; a name is ``""`` where unknown."""
    try:
        names = [p for p in inspect.signature(layer.call).parameters
                 if p not in ("self", "args", "kwargs")]
    except (TypeError, ValueError):
        names = []
    ids = {id(t) for t in inputs}
    roles: list[str] = []
    pairs = [(names[i] if i < len(names) else "", a) for i, a in enumerate(args)]
    for name, value in pairs + sorted(kwargs.items()):
        roles += [name] * sum(1 for v in flatten(value) if id(v) in ids)
    return roles if len(roles) == len(inputs) else [""] * len(inputs)
