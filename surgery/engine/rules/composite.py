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
For the ``activation`` criterion a block is run in a NumPy pass
(:mod:`~surgery.engine.rules.decoder_forward`). The grouped-query decoders (Llama, Mistral,
Qwen3, Gemma 3) are in :mod:`surgery.engine.rules.decoders`, keras-hub's ViT and DeiT
encoders (all blocks in one layer) in :mod:`surgery.engine.rules.vit`.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from surgery.engine.rules.attention import attention_scores
from surgery.engine.rules.base import BLOCKING, LayerRule, CLASS_KEY, concrete, with_config
from surgery.engine.rules.depth import BLOCKS, BlockDepth, block_change, is_skipped
from surgery.engine.rules.decoder_forward import position_mean, transformer_forward
from surgery.engine.rules.registry import register_rule, rule_for

#: The unit axes of a block's self-attention (the MultiHeadAttention rule's).
ATTENTION_AXES = ("heads", "key_dim", "value_dim")


def attention_call(info, name: str, weights, heads: int, key_dim: int, value_dim: int,
                   use_bias: bool):
    """A block's self-attention sublayer (``MultiHeadAttention`` reading the block's input
    as query and value) as a call of its own, and its rule."""
    shape = tuple(info.input_shape)
    sub = dataclasses.replace(
        info, class_name="MultiHeadAttention", name=f"{info.name}/{name}",
        config=dict(num_heads=heads, key_dim=key_dim, value_dim=value_dim,
                    use_bias=use_bias, output_shape=None),
        input_shapes=[shape, shape], output_shape=shape, input_roles=["query", "value"],
        load_weights=None, layer=None, _weights=list(weights))
    return sub, rule_for("MultiHeadAttention")


def positions_of(info) -> int:
    """Token positions of one call (all but the last axis of its input)."""
    return int(np.prod(concrete(info.input_shape[:-1]))) if len(info.input_shape) > 1 else 1


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
    #: each weight's role, in ``get_weights()`` order (for :func:`transformer_forward`)
    weight_order = ("query", "query_bias", "key", "key_bias", "value", "value_bias", "output",
                    "output_bias", "attention_norm", "attention_norm_beta", "ffw_norm",
                    "ffw_norm_beta", "intermediate", "intermediate_bias", "down", "down_bias")
    causal = False

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
        return attention_call(info, "self_attention_layer",
                              info.weights[self.attention] if weights is None else weights,
                              heads, key_dim, value_dim, True)

    # ---- units ---------------------------------------------------------------------------
    def unit_axes(self, info) -> dict:
        sub, rule = self._attention(info)
        return {**rule.unit_axes(sub), "intermediate_dim": int(info.config["intermediate_dim"])}

    def interacting_axes(self, info) -> list:
        sub, rule = self._attention(info)
        return rule.interacting_axes(sub)

    def unit_slices(self, info, axis):
        if axis in ATTENTION_AXES:  # the attention's weights come first: same indices
            sub, rule = self._attention(info)
            return rule.unit_slices(sub, axis)
        if axis == "intermediate_dim":
            return [(self.intermediate, -1), (self.intermediate + 1, 0)]
        return super().unit_slices(info, axis)

    def unit_matrix(self, info, axis):
        if axis in ATTENTION_AXES:
            sub, rule = self._attention(info)
            return rule.unit_matrix(sub, axis)
        return super().unit_matrix(info, axis)

    def cut_units(self, info, cuts):
        weights = list(info.weights)
        config = dict(info.config)
        attention_cuts = {a: v for a, v in cuts.items() if a in ATTENTION_AXES and len(v)}
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

    def unit_activations(self, info, inputs: list) -> dict:
        """Per example, over the tokens the padding mask keeps: the attention's activations
        (:func:`~surgery.engine.rules.attention.attention_scores`: heads and head widths),
        each ``intermediate_dim`` unit's mean |activation| and (a unit of depth) the
        block's change of the residual stream; from a NumPy pass over the block
        (:func:`~surgery.engine.rules.decoder_forward.transformer_forward`)."""
        if len(info.weights) != 16 or not inputs or np.ndim(inputs[0]) != 3:
            return {}
        run = transformer_forward(info.config, dict(zip(self.weight_order, info.weights)),
                                  inputs, list(info.input_roles), self.causal)
        if run is None:
            return {}
        out = dict(attention_scores(run.queries, run.keys, run.contexts,
                                    lambda a: position_mean(a, run.valid)),
                   intermediate_dim=position_mean(np.abs(run.hidden), run.valid))
        if BLOCKS in self.unit_axes(info):
            out[BLOCKS] = block_change(inputs[0], run.output, run.valid)
        return out

    # ---- costs -----------------------------------------------------------------------------
    def flops(self, info) -> int:
        sub, rule = self._attention(info)
        hidden = int(info.input_shape[-1])
        return rule.flops(sub) + \
            2 * 2 * positions_of(info) * hidden * int(info.config["intermediate_dim"])


@register_rule("TransformerDecoder")
class TransformerDecoderRule(BlockDepth, TransformerEncoderRule):
    """``keras_hub.layers.TransformerDecoder`` without cross-attention (GPT-2's block).
    Weights: self-attention (8), its LayerNormalization (2), the intermediate Dense (2),
    the output Dense (2) and the feed-forward LayerNormalization (2). A decoder with
    cross-attention (more weights) offers no units. A pre-norm block
    (``normalize_first``, GPT-2's) is also a unit of depth
    (:mod:`~surgery.engine.rules.depth`): with its attention output and output Dense zero
    (kernels and biases) it is the identity."""

    intermediate, output = 10, 12
    registered = "surgery>TransformerDecoder"
    weight_order = ("query", "query_bias", "key", "key_bias", "value", "value_bias", "output",
                    "output_bias", "attention_norm", "attention_norm_beta", "intermediate",
                    "intermediate_bias", "down", "down_bias", "ffw_norm", "ffw_norm_beta")
    causal = True

    def unit_axes(self, info) -> dict:
        if len(info.weights) != 16:
            return {}
        return dict(super().unit_axes(info), **self.depth_axes(info))

    def has_depth(self, info) -> bool:
        return bool(info.config.get("normalize_first"))

    def branch_ends(self, info) -> list:
        return [6, 7, self.output, self.output + 1]

    def flops(self, info) -> int:
        return 0 if is_skipped(info) else super().flops(info)
