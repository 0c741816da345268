"""Layer rules: the one place that knows each layer type.

This package owns the registry that maps a layer's class name (or a non-layer operation's
name) to its :class:`~surgery.engine.rules.base.LayerRule`, and the built-in rules, one
module per layer family. Groups, surgery, zeroing, FLOPs, criteria, penalties and sparsity
all ask :func:`rule_for`; nothing else keeps a per-class table. A new layer type is one
registration with :func:`register_rule`. Keys are exact class names, so a user's subclass
of ``Conv2D`` is never cut as a plain ``Conv2D`` by accident.
"""
from __future__ import annotations

from surgery.engine.rules.base import (  # noqa: F401  (the rule vocabulary)
    BLOCKING, CHANNELWISE, CONCAT, FLOWS, MERGE, MIXING, PRODUCER, RESHAPE, LayerInfo,
    LayerRule, channel_vector, mask_for_shape, merged_mask, with_config,
)
from surgery.engine.rules.registry import register_rule, registered, rule_for  # noqa: F401
# Importing the families registers the built-in rules.
from surgery.engine.rules import (  # noqa: F401
    activations, attention, composite, convolutions, decoders, dense, depth, einsum, embedding,
    keras_ops, merging, normalization, preprocessing, recurrent, reshaping, spatial, tf_ops,
    vit, wrappers,
)
