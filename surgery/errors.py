"""The exceptions the plugin raises. Both subclass ValueError so existing
``except ValueError`` code written against kerassurgeon keeps working."""
from __future__ import annotations


class SurgeryError(ValueError):
    """A surgery request that cannot be carried out as asked: channel indices out of
    range, deleting every channel of a layer, a model that is not functional, …"""


class UnsupportedLayerError(SurgeryError):
    """A layer that channel deletion reaches but no handler knows how to cut.

    The message names the layer, its class, and the two ways out: register a rule for
    the class with ``surgery.register_rule``, or keep the channels that reach it
    with ``ignore=``.
    """

    def __init__(self, layer, detail: str = ""):
        self.layer_name = getattr(layer, "name", str(layer))
        self.layer_class = getattr(layer, "class_name", None) or type(layer).__name__
        message = (
            f"layer '{self.layer_name}' ({self.layer_class}) is not supported by channel "
            f"surgery{': ' + detail if detail else ''}. Register a rule for it with "
            f"@surgery.register_rule('{self.layer_class}'), or leave the channels that "
            f"reach it alone with ignore=[...]."
        )
        super().__init__(message)
