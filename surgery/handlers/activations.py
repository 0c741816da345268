"""Activation layers. Element-wise ones pass the deletion through unchanged; ``PReLU``
also drops the slopes of the deleted channels. Activations that mix channels (softmax)
cannot be cut exactly and are refused."""
from __future__ import annotations

from surgery.errors import UnsupportedLayerError
from surgery.registry import channel_vector, rebuilt, register_handler

_CHANNEL_MIXING = {"softmax", "log_softmax"}


@register_handler(("ReLU", "LeakyReLU", "ELU", "ThresholdedReLU"))
def elementwise(layer, mask):
    return layer, mask


@register_handler("Activation")
def activation(layer, mask):
    name = getattr(layer.activation, "__name__", str(layer.activation))
    if name in _CHANNEL_MIXING:
        raise UnsupportedLayerError(
            layer, f"activation '{name}' normalises across channels, so deleting channels "
                   "would change the remaining outputs")
    return layer, mask


@register_handler("Softmax")
def softmax(layer, mask):
    raise UnsupportedLayerError(
        layer, "softmax normalises across channels, so deleting channels would change the "
               "remaining outputs")


@register_handler("PReLU")
def prelu(layer, mask):
    keep = channel_vector(mask)
    if keep.all():
        return layer, mask
    (alpha,) = layer.get_weights()
    return rebuilt(layer, [alpha[..., keep]]), mask
