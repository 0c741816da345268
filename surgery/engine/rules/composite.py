"""Composite layers: keras-hub blocks that hold their sublayers inside one layer.

A keras-hub backbone is a functional model, but each transformer block is one layer whose
attention and feed-forward sublayers the graph never shows. Such a layer's rule opens it:
it says where each sublayer's weights sit in the block's ``get_weights()`` list, describes
the sublayer as a :class:`LayerInfo` of its own, and lets that sublayer's rule do the
work. The block's prunable units (``unit_axes``) are its attention's heads and head widths
(the ``MultiHeadAttention`` rule's axes) and its feed-forward width (``intermediate_dim``);
its hidden width passes the block's LayerNormalization and residual adds inside, so
deletions from outside stop at it.

keras-hub derives the head size from the hidden width (``hidden_dim // num_heads``), so a
block that lost heads is rebuilt as its registered equivalent
(:mod:`surgery.models.hub_blocks`: the same class with ``key_dim`` / ``value_dim`` in
its config), named in the new config under :data:`~surgery.engine.rules.base.CLASS_KEY`.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from surgery.engine.rules import BLOCKING, LayerRule, register_rule, rule_for
from surgery.engine.rules.base import CLASS_KEY, concrete, with_config

_HEAD_AXES = ("heads", "key_dim", "value_dim")


@register_rule("TransformerEncoder")
class TransformerEncoderRule(LayerRule):
    """``keras_hub.layers.TransformerEncoder`` (BERT-style; also surgery's registered
    equivalent). Weights: self-attention (8: query, key, value, output kernels and
    biases), its LayerNormalization (2), the feed-forward LayerNormalization (2), the
    intermediate Dense (2) and the output Dense (2)."""

    flow = BLOCKING
    attention = slice(0, 8)
    intermediate, output = 12, 14
    registered = "surgery>TransformerEncoder"

    def blocked(self, info) -> str:
        return (f"the hidden width of {info.describe()} passes its LayerNormalization and "
                "residual adds inside (its heads and intermediate_dim are pruned)")

    def _dims(self, info) -> tuple:
        hidden = int(info.input_shape[-1])
        heads = int(info.config["num_heads"])
        key_dim = int(info.config.get("key_dim") or hidden // heads)
        return hidden, heads, key_dim, int(info.config.get("value_dim") or key_dim)

    def _attention(self, info, weights=None):
        """The self-attention sublayer as a call of its own, and its rule."""
        hidden, heads, key_dim, value_dim = self._dims(info)
        shape = tuple(info.input_shape)
        sub = dataclasses.replace(
            info, class_name="MultiHeadAttention", name=f"{info.name}/self_attention_layer",
            config=dict(num_heads=heads, key_dim=key_dim, value_dim=value_dim,
                        use_bias=True, output_shape=None),
            input_shapes=[shape, shape], output_shape=shape, input_roles=["query", "value"],
            load_weights=None, layer=None,
            _weights=list(info.weights[self.attention] if weights is None else weights))
        return sub, rule_for("MultiHeadAttention")

    # ---- units ---------------------------------------------------------------------------
    def unit_axes(self, info) -> dict:
        sub, rule = self._attention(info)
        return {**rule.unit_axes(sub), "intermediate_dim": int(info.config["intermediate_dim"])}

    def unit_slices(self, info, axis):
        if axis in _HEAD_AXES:  # the attention's weights come first: same indices
            sub, rule = self._attention(info)
            return rule.unit_slices(sub, axis)
        if axis == "intermediate_dim":
            return [(self.intermediate, -1), (self.intermediate + 1, 0)]
        return super().unit_slices(info, axis)

    def unit_matrix(self, info, axis):
        if axis in _HEAD_AXES:
            sub, rule = self._attention(info)
            return rule.unit_matrix(sub, axis)
        return super().unit_matrix(info, axis)

    def cut_units(self, info, cuts):
        weights = list(info.weights)
        config = dict(info.config)
        attention_cuts = {a: v for a, v in cuts.items() if a in _HEAD_AXES and len(v)}
        if attention_cuts:
            sub, rule = self._attention(info)
            sub_config, weights[self.attention] = rule.cut_units(sub, attention_cuts)
            config.update(num_heads=sub_config["num_heads"], key_dim=sub_config["key_dim"],
                          value_dim=sub_config["value_dim"])
            config[CLASS_KEY] = self.registered
        gone = list(cuts.get("intermediate_dim", ()))
        if gone:
            k = self.intermediate
            weights[k] = np.delete(weights[k], gone, axis=-1)
            weights[k + 1] = np.delete(weights[k + 1], gone, axis=0)
            weights[self.output] = np.delete(weights[self.output], gone, axis=0)
            config["intermediate_dim"] = int(info.config["intermediate_dim"]) - len(gone)
        return with_config(config), weights

    # ---- costs -----------------------------------------------------------------------------
    def flops(self, info) -> int:
        sub, rule = self._attention(info)
        positions = int(np.prod(concrete(info.input_shape[:-1]))) if len(info.input_shape) > 1 \
            else 1
        hidden = int(info.input_shape[-1])
        return rule.flops(sub) + 2 * 2 * positions * hidden * int(info.config["intermediate_dim"])
