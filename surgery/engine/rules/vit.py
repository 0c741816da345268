"""keras-hub's ViT and DeiT encoders: all the blocks of a vision transformer in one layer.

The encoder's rule opens it as :mod:`surgery.engine.rules.composite` opens one block: it
finds each block's sublayers among the encoder's weights, lets the attention rule cut each
block's heads and head widths (``"<block>/key_dim"``, ``"<block>/value_dim"``: offered
with ``head_dims=True``), cuts each block's MLP width itself, and offers the blocks as the
unit axis ``"blocks"`` (depth). For the ``activation`` criterion it runs the blocks in one
NumPy pass on the encoder's input. A ViT block may lose all its heads
(:meth:`ViTEncoderRule.emptiable_axes`): it is rebuilt attention-free, adding only its
attention's output bias (:func:`surgery.models.hub_blocks.attention_free_block_class`).
"""
from __future__ import annotations

import numpy as np

from surgery.engine.rules.base import BLOCKING, CLASS_KEY, LayerRule, with_config
from surgery.engine.rules.composite import ATTENTION_AXES, attention_call, positions_of
from surgery.engine.rules.numerics import gelu, layer_norm
from surgery.engine.rules.registry import register_rule


@register_rule("ViTEncoder")
class ViTEncoderRule(LayerRule):
    """keras-hub's ``ViTEncoder``: all the blocks of a ViT in one layer. Block ``i``
    (``transformer_block_{i+1}``) holds ``ln_1`` (2 weights), ``mha`` (8, or 4 without
    biases), ``ln_2`` (2) and an MLP ``dense_1`` / ``dense_2`` (2 each, 1 without biases);
    the final ``ln`` (2) comes last. Each block's unit axes are ``"<block>/heads"`` and
    ``"<block>/mlp_dim"`` (and its head widths ``"<block>/key_dim"`` and
    ``"<block>/value_dim"``), and the blocks themselves are the axis ``"blocks"`` (depth: a
    block adds its attention and MLP branches to the residual stream, so with both
    branches' output projections zero it is the identity, and removing it changes
    nothing); the pruned encoder is rebuilt as ``surgery>ViTEncoder``, whose config lists
    each remaining block's ``num_heads``, ``key_dim``, ``value_dim`` and ``mlp_dim``."""

    flow = BLOCKING
    registered = "surgery>ViTEncoder"
    mlp = "mlp_dim"  # the stock config's key of the MLP width
    attention_free = True  # whether a block may lose all its heads (see emptiable_axes)

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
            d = dict(d, value_dim=d.get("value_dim") or d["key_dim"])
            # an attention-free block (its heads all gone) holds no ln_1, and of its
            # attention only the output bias (when the attention had biases)
            norm, attention = (2, mha) if d["num_heads"] else (0, 1 if mha == 8 else 0)
            mlp = start + norm + attention + 2
            blocks.append(dict(d, name=f"transformer_block_{i + 1}", mha=start + norm,
                               mha_end=start + norm + attention, dense_1=mlp,
                               dense_2=mlp + dense, bias=dense == 2,
                               start=start, end=mlp + 2 * dense))
            start = mlp + 2 * dense
        return blocks

    def _attention(self, info, block, weights=None):
        return attention_call(
            info, f"{block['name']}/mha",
            info.weights[block["mha"]:block["mha_end"]] if weights is None else weights,
            block["num_heads"], block["key_dim"], block["value_dim"],
            bool(info.config.get("use_mha_bias", True)))

    def _find(self, info, axis):
        name, _, unit = axis.rpartition("/")
        block = next((b for b in self._blocks(info) if b["name"] == name), None)
        if block is None or unit not in (*ATTENTION_AXES, "mlp_dim"):
            return super().unit_slices(info, axis)
        return block, unit

    def unit_axes(self, info) -> dict:
        axes = {}
        blocks = self._blocks(info)
        for b in blocks:
            if b["num_heads"]:
                axes[f"{b['name']}/heads"] = b["num_heads"]
                axes[f"{b['name']}/key_dim"] = b["key_dim"]
                axes[f"{b['name']}/value_dim"] = b["value_dim"]
            axes[f"{b['name']}/mlp_dim"] = b["mlp_dim"]
        if len(blocks) > 1:
            axes["blocks"] = len(blocks)
        return axes

    def block_axes(self, info, block: int) -> list:
        b = self._blocks(info)[block]
        return [f"{b['name']}/{axis}"
                for axis in ((*ATTENTION_AXES, "mlp_dim") if b["num_heads"] else ("mlp_dim",))]

    def interacting_axes(self, info) -> list:
        return [(f"{b['name']}/heads", f"{b['name']}/{width}") for b in self._blocks(info)
                for width in ("key_dim", "value_dim") if b["num_heads"]]

    def emptiable_axes(self, info) -> list:
        """Each block's heads may all go (FLAP's global ranking empties whole attention
        layers): the block then adds the attention's output bias alone
        (``surgery>ViTEncoder`` rebuilds it attention-free), exactly what the attention
        adds with every head's value weights zero (the zeroing oracle)."""
        return [f"{b['name']}/heads" for b in self._blocks(info) if b["num_heads"]] \
            if self.attention_free else []

    @staticmethod
    def _branch_outputs(block) -> list:
        """The weights that end a block's two residual branches: the attention's output
        kernel (and bias; an attention-free block's bias alone) and the MLP's ``dense_2``
        kernel (and bias)."""
        mha = block["mha_end"] - block["mha"]
        outputs = [block["mha"] + 6, block["mha"] + 7] if mha == 8 else [block["mha"] + 3] \
            if mha == 4 else list(range(block["mha"], block["mha_end"]))
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
        if unit in ATTENTION_AXES:
            sub, rule = self._attention(info, block)
            return [(block["mha"] + i, a) for i, a in rule.unit_slices(sub, unit)]
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
        if unit in ATTENTION_AXES:
            sub, rule = self._attention(info, block)
            return rule.unit_matrix(sub, unit)
        return super().unit_matrix(info, axis)

    def _forward(self, info, inputs: list):
        """A NumPy pass over the blocks' weights: per block, ``(block, input, attention
        activations (the attention rule's heads, key_dim and value_dim), MLP activations,
        output)``."""
        w = [np.asarray(v, np.float64) for v in info.weights]
        eps = float(info.config.get("layer_norm_epsilon", 1e-6))
        h = np.asarray(inputs[0], np.float64)
        for b in self._blocks(info):
            scores: dict = {}
            if b["num_heads"]:
                sub, rule = self._attention(info, b)
                start = b["mha"] - 2
                x = layer_norm(h, w[start], w[start + 1], eps)
                _, attended = rule.heads_forward(sub, [x, x], scores)
                mid = h + attended
            else:  # attention-free: its output bias (if any) alone
                mid = h + sum(w[b["mha"]:b["mha_end"]], np.zeros(h.shape[-1]))
            k = b["dense_1"]
            x = layer_norm(mid, w[k - 2], w[k - 1], eps) @ w[k]
            a = gelu(x + w[k + 1] if b["bias"] else x)
            y = a @ w[b["dense_2"]]
            new = mid + (y + w[b["dense_2"] + 1] if b["bias"] else y)
            yield b, h, scores, a, new
            h = new

    def unit_activations(self, info, inputs: list) -> dict:
        """Per example: each head's context norm and each head width's activation (the
        attention rule's), each MLP unit's mean |GELU output| and each block's mean change
        of the residual stream (L2 over the hidden width), over the tokens. Heads, head
        widths and MLP units are divided by the mean norm of the residual stream their
        block reads: the stream grows through the blocks (in a trained ViT, tenfold), so a
        unit's share of it, not its size, is what removing it changes, and the planner
        compares the blocks' units on one scale."""
        out, changes = {}, []
        for b, h, scores, a, new in self._forward(info, inputs):
            stream = np.maximum(np.sqrt(np.square(h).sum(-1)).mean(axis=1), 1e-12)[:, None]
            out.update({f"{b['name']}/{axis}": v / stream for axis, v in scores.items()})
            out[f"{b['name']}/mlp_dim"] = np.abs(a).mean(axis=1) / stream
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
        removed = set(cuts.get("blocks", ()))
        blocks = self._blocks(info)
        weights, dims = [], []
        for i, b in enumerate(blocks):
            if i not in removed:
                block_weights, block_dims = self._cut_block(info, b, cuts)
                weights += block_weights
                dims.append(block_dims)
        weights += list(info.weights[blocks[-1]["end"]:])  # the final ln
        return with_config(info.config, blocks=dims, num_layers=len(dims),
                           **{CLASS_KEY: self.registered}), weights

    def _cut_block(self, info, b, cuts) -> tuple:
        """Block ``b``'s weights and widths after ``cuts``; a block that lost all its
        heads keeps its attention's output bias alone (and no ``ln_1``)."""
        w = list(info.weights[b["start"]:b["end"]])
        mha, mha_end, k, out = (b[key] - b["start"] for key in
                                ("mha", "mha_end", "dense_1", "dense_2"))
        attention = {a: list(cuts[f"{b['name']}/{a}"]) for a in ATTENTION_AXES
                     if cuts.get(f"{b['name']}/{a}")}
        gone = list(cuts.get(f"{b['name']}/mlp_dim", ()))
        if gone:
            w[k] = np.delete(w[k], gone, axis=-1)
            if b["bias"]:
                w[k + 1] = np.delete(w[k + 1], gone, axis=0)
            w[out] = np.delete(w[out], gone, axis=0)
        heads = b["num_heads"] - len(attention.get("heads", ()))
        dims = dict(num_heads=heads, key_dim=b["key_dim"] - len(attention.get("key_dim", ())),
                    value_dim=b["value_dim"] - len(attention.get("value_dim", ())),
                    mlp_dim=b["mlp_dim"] - len(gone))
        if attention and not heads:  # attention-free
            w = (w[mha + 7:mha + 8] if mha_end - mha == 8 else []) + w[mha_end:]
            dims.update(key_dim=b["key_dim"], value_dim=b["value_dim"])
        elif attention:  # the attention rule folds a key width cut into the query scale
            sub, rule = self._attention(info, b)
            _, w[mha:mha_end] = rule.cut_units(sub, attention)
        return w, dims

    def flops(self, info) -> int:
        total = 0
        for b in self._blocks(info):
            if b["num_heads"]:
                sub, rule = self._attention(info, b)
                total += rule.flops(sub)
            total += \
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
    attention_free = False  # surgery>DeiTEncoder has no attention-free block
