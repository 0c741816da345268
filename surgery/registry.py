"""The layer-handler registry: how channel deletion crosses each layer class.

Two kinds of handler are registered here, both keyed by exact layer class (a class object
or its name, so a user's subclass of ``Conv2D`` is never cut as a plain ``Conv2D`` by
accident):

* **mask handlers** ``(layer, masks) -> (new_layer, outbound_mask)`` for layers that
  *receive* deleted channels. ``masks`` follows kerassurgeon's convention (boolean array
  shaped like the input without batch, ``False`` = deleted); layers with several inputs
  get a list. ``new_layer`` is ``layer`` itself when it holds no weights to cut;
  ``outbound_mask`` is ``None`` when a channel-mixing layer consumed the deletion.
* **output handlers** ``(layer, channels) -> new_layer`` for layers whose *own* output
  channels can be deleted (register with ``outputs=True``).

Handlers are pure functions of their arguments: they never touch a model.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import numpy as np

MaskHandler = Callable[..., tuple]
OutputHandler = Callable[..., object]

_MASK_HANDLERS: dict[str, MaskHandler] = {}
_OUTPUT_HANDLERS: dict[str, OutputHandler] = {}


def _key(cls_or_name: Union[type, str]) -> str:
    return cls_or_name if isinstance(cls_or_name, str) else cls_or_name.__name__


def register_handler(cls_or_name: Union[type, str, tuple], *, outputs: bool = False
                     ) -> Callable[[Callable], Callable]:
    """Decorator: register a handler for a layer class (or a tuple of them).

    Example — a custom layer that scales each channel by a learned vector::

        @surgery.register_handler("ChannelScale")
        def channel_scale(layer, mask):
            keep = surgery.handlers.channel_vector(mask)
            config = layer.get_config()
            config["weights"] = [w[..., keep] for w in layer.get_weights()]
            return type(layer).from_config(config), mask

    With ``outputs=True`` the handler deletes the layer's own output channels::

        @surgery.register_handler("MyConv", outputs=True)
        def my_conv_outputs(layer, channels):
            ...  # return a new layer without those filters

    Registering a class again replaces the earlier handler.
    """
    keys = [_key(c) for c in (cls_or_name if isinstance(cls_or_name, tuple)
                              else (cls_or_name,))]
    table = _OUTPUT_HANDLERS if outputs else _MASK_HANDLERS

    def decorator(fn: Callable) -> Callable:
        for key in keys:
            table[key] = fn
        return fn
    return decorator


def mask_handler(layer) -> Optional[MaskHandler]:
    return _MASK_HANDLERS.get(type(layer).__name__)


def output_handler(layer) -> Optional[OutputHandler]:
    return _OUTPUT_HANDLERS.get(type(layer).__name__)


def registered(outputs: bool = False) -> list[str]:
    """Names of the layer classes with a registered handler."""
    return sorted(_OUTPUT_HANDLERS if outputs else _MASK_HANDLERS)


# ---- small helpers shared by handlers -------------------------------------------------

def channel_vector(mask: np.ndarray, axis: int = -1) -> np.ndarray:
    """The per-channel keep vector of a full-shaped mask (channels on ``axis``)."""
    mask = np.asarray(mask, dtype=bool)
    moved = np.moveaxis(mask, axis, -1).reshape(-1, mask.shape[axis])
    return moved[0]


def mask_for_shape(keep: np.ndarray, shape, axis: int = -1) -> np.ndarray:
    """A full-shaped mask (``shape`` without batch) whose channel axis is ``keep``."""
    shape = tuple(shape)
    view = [1] * len(shape)
    view[axis] = len(keep)
    return np.broadcast_to(np.asarray(keep, bool).reshape(view), shape).copy()


def output_shape(layer, mask: np.ndarray) -> tuple:
    """The layer's output shape (no batch) for an input shaped like ``mask``."""
    shape = layer.compute_output_shape((None,) + tuple(mask.shape))
    return tuple(getattr(shape, "as_list", lambda: shape)())[1:]


def rebuilt(layer, weights: list, **config_changes):
    """A new layer of ``layer``'s class, from its config with changes, holding ``weights``."""
    config = layer.get_config()
    config.update(config_changes)
    config["weights"] = weights
    return type(layer).from_config(config)
