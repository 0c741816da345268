"""The old handler API, kept for users who registered handlers before layer rules.

A *mask handler* ``(layer, masks) -> (new_layer, outbound_mask)`` cuts a layer that receives
deleted channels; an *output handler* (``outputs=True``) ``(layer, channels) -> new_layer``
deletes a layer's own output channels. :func:`register_handler` wraps them in a
:class:`~surgery.engine.rules.LayerRule`: registered for a class that already has a rule,
the handler replaces only the cutting and the rule's channel flow stays (so a handler for
``Add`` still couples the channels it merges); for a new class, a mask handler makes a
channel-wise rule and an output handler a producer. New code should register a rule.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Union

import numpy as np

from surgery.engine.rules import (
    CHANNELWISE, PRODUCER, LayerRule, channel_vector, mask_for_shape, register_rule,
    rule_for,
)


class HandlerRule(LayerRule):
    """A rule whose cuts are done by old-style handlers on live layer objects."""

    def __init__(self, base: Optional[LayerRule]):
        self.base = base
        self.mask_handler: Optional[Callable] = None
        self.output_handler: Optional[Callable] = None

    def __getattr__(self, name):  # everything not overridden comes from the base rule
        base = self.__dict__.get("base")
        if base is None:
            raise AttributeError(name)
        return getattr(base, name)

    def flow_of(self, info) -> str:
        if self.base is not None:
            return self.base.flow_of(info)
        return PRODUCER if self.output_handler else CHANNELWISE

    def cut_inputs(self, info, masks):
        if self.mask_handler is None:
            return self.base.cut_inputs(info, masks) if self.base else None
        new_layer, _ = self.mask_handler(
            info.layer, masks[0] if len(masks) == 1 else masks)
        return None if new_layer is info.layer else new_layer

    def propagate(self, info, masks, strict: bool = True):
        if self.mask_handler is None:
            return self.base.propagate(info, masks, strict) if self.base else \
                LayerRule.propagate(self, info, masks, strict)
        _, mask = self.mask_handler(info.layer, masks[0] if len(masks) == 1 else masks)
        return mask

    def cut_outputs(self, info, channels):
        if self.output_handler is None:
            return self.base.cut_outputs(info, channels)
        return self.output_handler(info.layer, list(channels))


def register_handler(cls_or_name: Union[type, str, tuple], *, outputs: bool = False):
    """Decorator: register an old-style handler for a layer class (or a tuple of them).

    Deprecated: register a :class:`surgery.LayerRule` with :func:`surgery.register_rule`.

    Example — a custom layer that scales each channel by a learned vector::

        @surgery.register_handler("ChannelScale")
        def channel_scale(layer, mask):
            keep = surgery.engine.rules.channel_vector(mask)
            config = layer.get_config()
            config["weights"] = [w[..., keep] for w in layer.get_weights()]
            return type(layer).from_config(config), mask
    """
    warnings.warn("surgery.register_handler is deprecated: register a surgery.LayerRule "
                  "with @surgery.register_rule instead", DeprecationWarning, stacklevel=2)
    names = [n if isinstance(n, str) else n.__name__
             for n in (cls_or_name if isinstance(cls_or_name, tuple) else (cls_or_name,))]

    def decorator(fn: Callable) -> Callable:
        for name in names:
            current = rule_for(name)
            rule = current if isinstance(current, HandlerRule) else HandlerRule(current)
            if outputs:
                rule.output_handler = fn
            else:
                rule.mask_handler = fn
            register_rule(name)(rule)
        return fn
    return decorator


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


__all__ = ["register_handler", "channel_vector", "mask_for_shape", "output_shape", "rebuilt"]
