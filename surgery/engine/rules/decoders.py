"""Grouped-query decoder blocks: keras-hub's Llama, Mistral, Qwen3 and Gemma 3 decoders.

Each block is one composite layer (see :mod:`surgery.engine.rules.composite`) whose rule
reads its weights by role (query, key, value, output, the gated feed-forward kernels): its
unit axes are the query heads (an equal number from every key/value group), the whole
key/value groups (``query_groups``, each with its query heads) and the feed-forward width
(``intermediate_dim``). Its hidden width passes through it: channel ``c`` of its input is
channel ``c`` of its output (residual adds inside), read by the query, key, value, gate
and intermediate kernels, written by the attention output and down kernels, and scaled by
RMS norms over the hidden width, which stay exact as :mod:`~surgery.engine.rules.normalization`
says (gains × ``sqrt(d/d')``, ``layer_norm_epsilon`` × ``d/d'``). A block that keeps its head size but loses heads is rebuilt as its registered equivalent
(:mod:`surgery.models.hub_blocks`) where the stock config cannot say so. For the
``activation`` criterion each rule scores its units from a NumPy pass over the block
(:mod:`surgery.engine.rules.decoder_forward`) on the call's captured inputs.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from surgery.engine.rules.base import CHANNELWISE, LayerRule, CLASS_KEY, channel_vector
from surgery.engine.rules.composite import positions_of
from surgery.engine.rules.decoder_forward import DecoderPass, decoder_forward, position_mean
from surgery.engine.rules.depth import (BLOCKS, BlockDepth, block_change, is_skipped,
                                        skipped_block)
from surgery.engine.rules.registry import register_rule


@register_rule("LlamaTransformerDecoder")
class LlamaDecoderRule(BlockDepth, LayerRule):
    """keras-hub's ``LlamaTransformerDecoder`` (grouped-query attention, gated FFN).
    Weights: query ``(hidden, heads, head_dim)``, key and value ``(hidden, kv_heads,
    head_dim)``, output ``(heads, head_dim, hidden)``, the attention RMS norm, the
    intermediate and gate kernels ``(hidden, intermediate_dim)``, the output kernel and
    the feed-forward RMS norm; no biases (their indices: the class attributes). Query head
    ``u`` reads key/value head ``u // (heads // kv_heads)``, so the ``heads`` axis has
    ``kv_heads`` blocks: every key/value group keeps the same number of query heads; the
    groups themselves are the axis ``query_groups`` (a group goes with its key and value
    heads and its query heads, zeroed through its value kernel). A
    head is zeroed through its output-projection rows; an ``intermediate_dim`` channel
    through its intermediate and gate columns (``silu(0) * 0 = 0``). The block keeps its
    head size when it loses heads, as ``surgery>LlamaTransformerDecoder`` (``head_dim``
    in its config)."""

    flow = CHANNELWISE
    registered: Optional[str] = "surgery>LlamaTransformerDecoder"
    head_axis = 1  # of the query, key and value kernels; the output kernel's is 0
    #: each weight's role, in ``get_weights()`` order
    weight_order = ("query", "key", "value", "output", "attention_norm", "intermediate",
                    "gate", "down", "ffw_norm")
    #: whose arithmetic the NumPy pass follows (:func:`decoder_forward`)
    family = "llama"

    #: RMS norms over the hidden width apply ``offset + gain`` (Gemma: ``1 + gain``)
    norm_offset = 0.0

    def has_channel_weights(self, info) -> bool:
        return True

    def _hidden_axes(self, info) -> dict:
        """Each weight's hidden axis, by index (the norms' gains: their only axis)."""
        axes = {}
        for k, role in enumerate(self._order(info)):
            if role in ("query", "key", "value"):
                axes[k] = 1 if self.head_axis == 0 else 0
            elif role in ("intermediate", "gate"):
                axes[k] = 0
            elif role in ("output", "down") or role.endswith("norm") and \
                    role not in ("query_norm", "key_norm"):
                axes[k] = -1
        return axes

    def cut_inputs(self, info, masks):
        keep = channel_vector(masks[0])
        if keep.all():
            return None
        ratio = len(keep) / int(keep.sum())  # d / d'
        weights = list(info.weights)
        roles = self._order(info)
        for k, axis in self._hidden_axes(info).items():
            kept = np.compress(keep, weights[k], axis=axis)
            if roles[k].endswith("norm"):  # exact across the RMS norm (module docstring)
                gain = kept.astype(np.float64) + self.norm_offset
                kept = (gain * np.sqrt(ratio) - self.norm_offset).astype(kept.dtype)
            weights[k] = kept
        config = dict(info.config, layer_norm_epsilon=float(
            info.config["layer_norm_epsilon"]) * ratio)
        if "hidden_dim" in config:
            config["hidden_dim"] = int(keep.sum())
        # Llama's block would derive its head size from the hidden width
        config["head_dim"] = int(weights[self._at(info)["query"]].shape[-1])
        if self.registered:
            config[CLASS_KEY] = self.registered
        return config, weights

    def zero_inputs(self, info, keep):
        """Zero input channels stay zero: the attention output and down kernels stop
        writing them."""
        if keep.all():
            return None
        weights = [w.copy() for w in info.weights]
        at = self._at(info)
        for k in (at["output"], at["down"]):
            weights[k][..., ~keep] = 0
        return weights

    def _at(self, info) -> dict:
        """The index of each weight this rule reads, by role."""
        names = self._order(info)
        return {role: names.index(role) for role in
                ("query", "key", "value", "output", "intermediate", "gate", "down")}

    def _order(self, info) -> tuple:
        return self.weight_order

    def unit_axes(self, info) -> dict:
        w, at = info.weights, self._at(info)
        heads, groups = (int(w[at[k]].shape[self.head_axis]) for k in ("query", "key"))
        axes = {"heads": heads, "intermediate_dim": int(w[at["intermediate"]].shape[1])}
        if 1 < groups < heads:  # grouped-query attention: whole key/value groups
            axes["query_groups"] = groups
        return dict(axes, **self.depth_axes(info))

    def branch_ends(self, info) -> list:
        at = self._at(info)
        return [at["output"], at["down"]]

    def unit_blocks(self, info, axis) -> int:
        return int(info.weights[self._at(info)["key"]].shape[self.head_axis]) \
            if axis == "heads" else 1

    def unit_slices(self, info, axis):
        at = self._at(info)
        if axis == "heads":
            return [(at["output"], 0)]
        if axis == "intermediate_dim":
            return [(at["intermediate"], -1), (at["gate"], -1)]
        if axis == "query_groups":  # a group's values: zero for each of its query heads
            return [(at["value"], self.head_axis)]
        return super().unit_slices(info, axis)

    def cut_units(self, info, cuts):
        if len(cuts.get(BLOCKS, ())):
            return skipped_block(info)
        weights, at = list(info.weights), self._at(info)
        config = dict(info.config)
        heads = list(cuts.get("heads", ()))
        groups = sorted(cuts.get("query_groups", ()))
        if groups:  # a removed group takes its key/value head and its query heads along
            per = self.unit_axes(info)["heads"] // self.unit_axes(info)["query_groups"]
            heads = sorted(set(heads) | {g * per + j for g in groups for j in range(per)})
            for k in (at["key"], at["value"]):
                weights[k] = np.delete(weights[k], groups, axis=self.head_axis)
            config["num_key_value_heads"] = int(weights[at["key"]].shape[self.head_axis])
        if heads:
            q = at["query"]
            config["head_dim"] = int(weights[q].shape[-1])
            weights[q] = np.delete(weights[q], heads, axis=self.head_axis)
            weights[at["output"]] = np.delete(weights[at["output"]], heads, axis=0)
            config["num_query_heads"] = int(weights[q].shape[self.head_axis])
            if self.registered:
                config[CLASS_KEY] = self.registered
        gone = list(cuts.get("intermediate_dim", ()))
        if gone:
            for k in (at["intermediate"], at["gate"]):
                weights[k] = np.delete(weights[k], gone, axis=-1)
            weights[at["down"]] = np.delete(weights[at["down"]], gone, axis=0)
            config["intermediate_dim"] = int(weights[at["intermediate"]].shape[1])
        return config, weights

    # ---- activations (scores from data) ------------------------------------------------
    def _forward(self, info, inputs: list) -> Optional[DecoderPass]:
        """The NumPy pass of the block on the call's ``inputs`` (its contexts, feed-forward
        activations and output), or ``None`` where it cannot tell."""
        if not inputs or np.ndim(inputs[0]) != 3:
            return None
        weights = dict(zip(self._order(info), info.weights))
        return decoder_forward(self.family, info.config, weights, inputs,
                               list(info.input_roles))

    def unit_activations(self, info, inputs: list) -> dict:
        """Per example, over the tokens the padding mask keeps: each query head's context
        norm (L2 over its width, as :class:`MultiHeadAttentionRule` scores heads), each
        key/value group's sum of its query heads' (a group takes them all along) and each
        ``intermediate_dim`` unit's mean ``|act(gate) * up|``, and the block's change of
        the residual stream (:func:`~surgery.engine.rules.depth.block_change`)."""
        run = self._forward(info, inputs)
        if run is None:
            return {}
        heads = position_mean(np.sqrt(np.square(run.contexts).sum(axis=-1)), run.valid)
        out = {"heads": heads, "intermediate_dim": position_mean(np.abs(run.hidden), run.valid),
               BLOCKS: block_change(inputs[0], run.output, run.valid)}
        groups = self.unit_axes(info).get("query_groups")
        if groups:
            out["query_groups"] = heads.reshape(len(heads), groups, -1).sum(axis=-1)
        return out

    def flops(self, info) -> int:
        """The projections' multiply-adds per hidden channel, times the hidden width the
        call reads (so that cost models see what a hidden channel costs), and attention;
        none once the block is removed."""
        if is_skipped(info):
            return 0
        w, at = info.weights, self._at(info)
        query = w[at["query"]]
        t = positions_of(info)
        built = int(w[at["intermediate"]].shape[0])  # the weights' hidden width
        hidden = int(info.input_shape[-1] or built)
        per_channel = (query.size + w[at["key"]].size + w[at["value"]].size
                       + w[at["output"]].size + 3 * w[at["intermediate"]].size) / built
        return int(round(2 * t * (per_channel * hidden
                                  + t * 2 * query.shape[self.head_axis] * query.shape[-1])))


@register_rule("MistralTransformerDecoder")
class MistralDecoderRule(LlamaDecoderRule):
    """keras-hub's ``MistralTransformerDecoder``: the weights, axes and costs of
    :class:`LlamaDecoderRule`. Its stock config already takes ``head_dim``, so a block
    that lost heads is rebuilt as itself."""

    registered = None
    family = "mistral"


@register_rule("Qwen3TransformerDecoder")
class Qwen3DecoderRule(LlamaDecoderRule):
    """keras-hub's ``Qwen3TransformerDecoder``: Llama's block with an RMS norm over each
    query and key head's width (one scale shared by every head, after the query and key
    kernels), so its weights sit at other indices; a head goes as in Llama. Its stock
    ``get_config`` leaves out ``head_dim``, which its constructor needs: the block is read
    and rebuilt as ``surgery>Qwen3TransformerDecoder``."""

    registered = None  # layer_config names the equivalent for every Qwen3 block
    weight_order = ("query", "query_norm", "key", "key_norm", "value", "output",
                    "attention_norm", "intermediate", "gate", "down", "ffw_norm")
    family = "qwen3"


@register_rule("Gemma3DecoderBlock")
class Gemma3DecoderRule(LlamaDecoderRule):
    """keras-hub's ``Gemma3DecoderBlock``: Llama's units with the head axis first in the
    query, key and value kernels ``(heads, hidden, head_dim)``, optional norms (query/key,
    after attention, after the feed-forward) that move the other weights, and
    ``head_dim`` in its stock config, so a block that lost heads is rebuilt as itself.
    Its weights follow the order its sublayers are made in: a post-attention norm right
    after the pre-attention norm, a post-feed-forward norm right after the
    pre-feed-forward norm."""

    registered = None
    head_axis = 0
    family = "gemma3"
    norm_offset = 1.0

    def _order(self, info) -> tuple:
        c = info.config
        return (("attention_norm",)
                + (("post_attention_norm",) if c.get("use_post_attention_norm") else ())
                + ("query", "key", "value")
                + (("query_norm", "key_norm") if c.get("use_query_key_norm", True) else ())
                + ("output", "ffw_norm")
                + (("post_ffw_norm",) if c.get("use_post_ffw_norm") else ())
                + ("gate", "intermediate", "down"))
