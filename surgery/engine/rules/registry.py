"""The rule registry: layer class name (or operation name) -> :class:`LayerRule`.

This module owns :func:`register_rule`, :func:`rule_for` and :func:`registered`. It
imports no rule family, so the families register themselves here without a circle;
:mod:`surgery.engine.rules` imports them all.
"""
from __future__ import annotations

from typing import Optional, Union

from surgery.engine.rules.base import LayerInfo, LayerRule

_RULES: dict[str, LayerRule] = {}


def register_rule(names: Union[str, type, tuple]):
    """Decorator: register a :class:`LayerRule` subclass (or instance) for layer classes.

    ``names`` is a class name, a class, or a tuple of them. Registering a name again
    replaces the earlier rule.

    >>> import surgery
    >>> @surgery.register_rule("MyIdentity")
    ... class MyIdentityRule(surgery.LayerRule):
    ...     flow = "channelwise"
    >>> type(surgery.rule_for("MyIdentity")).__name__
    'MyIdentityRule'
    """
    keys = [n if isinstance(n, str) else n.__name__
            for n in (names if isinstance(names, tuple) else (names,))]

    def decorator(rule):
        instance = rule() if isinstance(rule, type) else rule
        if not isinstance(instance, LayerRule):
            raise TypeError(f"register_rule expects a LayerRule, got {type(instance).__name__}")
        for key in keys:
            _RULES[key] = instance
        return rule
    return decorator


def rule_for(layer_or_name) -> Optional[LayerRule]:
    """The rule for a layer, a :class:`LayerInfo` or a class name; ``None`` if unknown.

    >>> import surgery
    >>> surgery.rule_for("Conv2D").flow
    'producer'
    """
    if isinstance(layer_or_name, str):
        key = layer_or_name
    elif isinstance(layer_or_name, LayerInfo):
        # a Keras 3 non-layer operation: its own rule first, else the same-named layer's
        own = _RULES.get(f"ops.{layer_or_name.op}") if layer_or_name.op else None
        if own is not None:
            return own
        key = layer_or_name.class_name
    else:
        key = type(layer_or_name).__name__
    return _RULES.get(key)


def registered() -> list[str]:
    """Names of the layer classes with a rule."""
    return sorted(_RULES)
