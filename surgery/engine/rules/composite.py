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
The grouped-query decoders (Llama, Mistral, Qwen3, Gemma 3) are in
:mod:`surgery.engine.rules.decoders`.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from surgery.engine.rules.base import BLOCKING, LayerRule, CLASS_KEY, concrete, with_config
from surgery.engine.rules.depth import BlockDepth, is_skipped
from surgery.engine.rules.registry import register_rule, rule_for

_HEAD_AXES = ("heads", "key_dim", "value_dim")


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


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    centred = x - x.mean(axis=-1, keepdims=True)
    return centred / np.sqrt(np.square(centred).mean(axis=-1, keepdims=True) + eps) * gamma \
        + beta


def _gelu(x: np.ndarray) -> np.ndarray:
    """The exact GELU keras-hub's encoders use, with ``erf`` to 1.5e-7 (Abramowitz and
    Stegun 7.1.26): activation scores need no more."""
    z = np.abs(x) / np.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 +
                                                                         t * 1.061405429))))
    erf = np.sign(x) * (1.0 - poly * np.exp(-z * z))
    return 0.5 * x * (1.0 + erf)


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


@register_rule("ViTEncoder")
class ViTEncoderRule(LayerRule):
    """keras-hub's ``ViTEncoder``: all the blocks of a ViT in one layer. Block ``i``
    (``transformer_block_{i+1}``) holds ``ln_1`` (2 weights), ``mha`` (8, or 4 without
    biases), ``ln_2`` (2) and an MLP ``dense_1`` / ``dense_2`` (2 each, 1 without biases);
    the final ``ln`` (2) comes last. Each block's unit axes are ``"<block>/heads"`` and
    ``"<block>/mlp_dim"``, and the blocks themselves are the axis ``"blocks"`` (depth: a
    block adds its attention and MLP branches to the residual stream, so with both
    branches' output projections zero it is the identity, and removing it changes
    nothing); the pruned encoder is rebuilt as ``surgery>ViTEncoder``, whose config lists
    each remaining block's ``num_heads``, ``key_dim`` and ``mlp_dim``."""

    flow = BLOCKING
    registered = "surgery>ViTEncoder"
    mlp = "mlp_dim"  # the stock config's key of the MLP width

    def blocked(self, info) -> str:
        return (f"the hidden width of {info.describe()} passes its LayerNormalizations and "
                "residual adds inside (its blocks' heads and mlp_dim are pruned)")

    def _blocks(self, info) -> list[dict]:
        """Per block: name, dims, and the first weight index of each sublayer."""
        config = info.config
        hidden = int(config["hidden_dim"])
        dims = config.get("blocks") or [
            dict(num_heads=int(config["num_heads"]),
                 key_dim=hidden // int(config["num_heads"]), mlp_dim=int(config[self.mlp]))
        ] * int(config["num_layers"])
        mha = 8 if config.get("use_mha_bias", True) else 4
        dense = 2 if config.get("use_mlp_bias", True) else 1
        blocks, start = [], 0
        for i, d in enumerate(dims):
            blocks.append(dict(d, name=f"transformer_block_{i + 1}", mha=start + 2,
                               mha_end=start + 2 + mha, dense_1=start + 4 + mha,
                               dense_2=start + 4 + mha + dense, bias=dense == 2,
                               start=start, end=start + 4 + mha + 2 * dense))
            start += 4 + mha + 2 * dense
        return blocks

    def _attention(self, info, block, weights=None):
        return attention_call(
            info, f"{block['name']}/mha",
            info.weights[block["mha"]:block["mha_end"]] if weights is None else weights,
            block["num_heads"], block["key_dim"], block["key_dim"],
            bool(info.config.get("use_mha_bias", True)))

    def _find(self, info, axis):
        name, _, unit = axis.rpartition("/")
        block = next((b for b in self._blocks(info) if b["name"] == name), None)
        if block is None or unit not in ("heads", "mlp_dim"):
            return super().unit_slices(info, axis)
        return block, unit

    def unit_axes(self, info) -> dict:
        axes = {}
        blocks = self._blocks(info)
        for b in blocks:
            axes[f"{b['name']}/heads"] = b["num_heads"]
            axes[f"{b['name']}/mlp_dim"] = b["mlp_dim"]
        if len(blocks) > 1:
            axes["blocks"] = len(blocks)
        return axes

    def block_axes(self, info, block: int) -> list:
        name = self._blocks(info)[block]["name"]
        return [f"{name}/heads", f"{name}/mlp_dim"]

    @staticmethod
    def _branch_outputs(block) -> list:
        """The weights that end a block's two residual branches: the attention's output
        kernel (and bias) and the MLP's ``dense_2`` kernel (and bias)."""
        mha = block["mha_end"] - block["mha"]
        outputs = [block["mha"] + 6, block["mha"] + 7] if mha == 8 else [block["mha"] + 3]
        return outputs + [block["dense_2"]] + ([block["dense_2"] + 1] if block["bias"]
                                               else [])

    def zero_units(self, info, cuts):
        cuts = dict(cuts)
        gone = cuts.pop("blocks", ())
        weights = super().zero_units(info, cuts)
        blocks = self._blocks(info)
        for i in gone:
            for k in self._branch_outputs(blocks[i]):
                weights[k] = np.zeros_like(weights[k])
        return weights

    def unit_slices(self, info, axis):
        if axis == "blocks":
            raise NotImplementedError("a block is zeroed by zero_units, not by slices")
        block, unit = self._find(info, axis)
        if unit == "heads":
            sub, rule = self._attention(info, block)
            return [(block["mha"] + i, a) for i, a in rule.unit_slices(sub, "heads")]
        slices = [(block["dense_1"], -1)]
        return slices + [(block["dense_1"] + 1, 0)] if block["bias"] else slices

    def unit_matrix(self, info, axis):
        if axis == "blocks":  # what each block's branches write to the residual stream
            rows = [np.concatenate([np.ravel(info.weights[k]) for k in self._branch_outputs(b)])
                    for b in self._blocks(info)]
            matrix = np.zeros((len(rows), max(len(r) for r in rows)))
            for i, r in enumerate(rows):
                matrix[i, :len(r)] = r
            return matrix
        block, unit = self._find(info, axis)
        if unit == "heads":
            sub, rule = self._attention(info, block)
            return rule.unit_matrix(sub, "heads")
        return super().unit_matrix(info, axis)

    def _forward(self, info, inputs: list):
        """A NumPy pass over the blocks' weights: per block, ``(block, input, head
        contexts, MLP activations, output)``."""
        w = [np.asarray(v, np.float64) for v in info.weights]
        eps = float(info.config.get("layer_norm_epsilon", 1e-6))
        h = np.asarray(inputs[0], np.float64)
        for b in self._blocks(info):
            sub, rule = self._attention(info, b)
            start = b["mha"] - 2
            x = _layer_norm(h, w[start], w[start + 1], eps)
            contexts, attended = rule.heads_forward(sub, [x, x])
            mid = h + attended
            k = b["dense_1"]
            x = _layer_norm(mid, w[k - 2], w[k - 1], eps) @ w[k]
            a = _gelu(x + w[k + 1] if b["bias"] else x)
            y = a @ w[b["dense_2"]]
            new = mid + (y + w[b["dense_2"] + 1] if b["bias"] else y)
            yield b, h, contexts, a, new
            h = new

    def unit_activations(self, info, inputs: list) -> dict:
        """Per example: each head's context norm, each MLP unit's mean |GELU output| and
        each block's mean change of the residual stream (L2 over the hidden width), over
        the tokens."""
        out, changes = {}, []
        for b, h, contexts, a, new in self._forward(info, inputs):
            out[f"{b['name']}/heads"] = np.sqrt(np.square(contexts).sum(-1)).mean(axis=1)
            out[f"{b['name']}/mlp_dim"] = np.abs(a).mean(axis=1)
            changes.append(np.sqrt(np.square(new - h).sum(-1)).mean(axis=1))
        out["blocks"] = np.stack(changes, axis=1)
        return out

    def unit_means(self, info, inputs: list) -> dict:
        """Each MLP unit's mean GELU output over the tokens, per example (what
        :meth:`fold_units` folds into the block's ``dense_2`` bias)."""
        return {f"{b['name']}/mlp_dim": a.mean(axis=1)
                for b, _, _, a, _ in self._forward(info, inputs) if b["bias"]}

    def fold_units(self, info, axis, units, means):
        if "/" not in axis:  # a whole block: nothing reads it but the residual stream
            return None
        block, unit = self._find(info, axis)
        if unit != "mlp_dim" or not block["bias"]:
            return None
        weights, k = list(info.weights), block["dense_2"]
        shift = np.asarray(means, np.float64) @ np.asarray(weights[k], np.float64)[list(units)]
        weights[k + 1] = (weights[k + 1] + shift).astype(weights[k + 1].dtype)
        return weights

    def cut_units(self, info, cuts):
        weights = list(info.weights)
        dims = []
        removed = set(cuts.get("blocks", ()))
        blocks = self._blocks(info)
        for i, b in enumerate(blocks):
            if i in removed:
                continue
            heads = list(cuts.get(f"{b['name']}/heads", ()))
            gone = list(cuts.get(f"{b['name']}/mlp_dim", ()))
            if heads:
                sub, rule = self._attention(info, b)
                _, weights[b["mha"]:b["mha_end"]] = rule.cut_units(sub, {"heads": heads})
            if gone:
                k = b["dense_1"]
                weights[k] = np.delete(weights[k], gone, axis=-1)
                if b["bias"]:
                    weights[k + 1] = np.delete(weights[k + 1], gone, axis=0)
                weights[b["dense_2"]] = np.delete(weights[b["dense_2"]], gone, axis=0)
            dims.append(dict(num_heads=b["num_heads"] - len(heads), key_dim=b["key_dim"],
                             mlp_dim=b["mlp_dim"] - len(gone)))
        for b in sorted((blocks[i] for i in removed), key=lambda b: -b["start"]):
            del weights[b["start"]:b["end"]]  # from the last: earlier indices stay valid
        return with_config(info.config, blocks=dims, num_layers=len(dims),
                           **{CLASS_KEY: self.registered}), weights

    def flops(self, info) -> int:
        total = 0
        for b in self._blocks(info):
            sub, rule = self._attention(info, b)
            total += rule.flops(sub) + \
                2 * 2 * positions_of(info) * int(info.config["hidden_dim"]) * b["mlp_dim"]
        return total


@register_rule("DeiTEncoder")
class DeiTEncoderRule(ViTEncoderRule):
    """keras-hub's ``DeiTEncoder``: the blocks of :class:`ViTEncoderRule` (``ln_1``,
    ``mha``, ``ln_2``, the MLP's ``mlp`` and ``output_layer`` Dense layers, with biases),
    its MLP width named ``intermediate_dim`` in the stock config (the unit axes are still
    ``"<block>/mlp_dim"``). The stock ``get_config`` raises (it reads a ``key_dim`` the
    encoder never sets), so every DeiT encoder is read and rebuilt as
    ``surgery>DeiTEncoder``."""

    registered = "surgery>DeiTEncoder"
    mlp = "intermediate_dim"
