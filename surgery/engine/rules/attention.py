"""``MultiHeadAttention`` (tf-keras and Keras 3): heads, head widths and output channels.

Kernels are ``(model_dim, heads, key_dim)`` for query and key, ``(model_dim, heads,
value_dim)`` for value (and Keras 3's optional ``gate``, read from the query), and
``(heads, value_dim, out_dim)`` for the output projection; biases follow their kernels
(``(heads, dim)``; ``(out_dim,)``). Weights come in the order query, key, [gate], value,
output, each kernel followed by its bias when ``use_bias``.

* **Output channels** (``out_dim``) are the layer's own channels: a producer, so its width
  joins the group (usually a residual stream) it writes into.
* **Inputs**: the query, key and value widths (``model_dim``) are read through kernel rows;
  a deletion cannot reach the attention mask.
* **Unit axes** (:meth:`~surgery.engine.rules.base.LayerRule.unit_axes`): ``heads``,
  ``key_dim`` and ``value_dim``. A head is zeroed by zeroing its value kernel and bias
  (its context is then zero, whatever its softmax); a value channel likewise; a key
  channel by zeroing its query and key slices (its term leaves every score). Scores are
  scaled by ``1/sqrt(key_dim)`` fixed at construction, so a ``key_dim`` cut folds
  ``scale(k) / scale(k')`` into the query kernel and bias. tf-keras multiplies the query by
  ``1/sqrt(k)`` in the model's dtype; Keras 3 passes the scale to
  ``ops.dot_product_attention``, which rounds it to float32 (DESIGN.md "Transformers").
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

from surgery.engine.rules.base import PRODUCER, LayerRule, channel_vector, with_config
from surgery.engine.rules.registry import register_rule
from surgery.engine.rules.convolutions import positions

_QKV = ("query", "value", "key")


def attention_scores(q, k, contexts, mean: Optional[Callable] = None) -> dict:
    """Per example, the activations of an attention's units from one pass's query and key
    projections and contexts (``(batch, positions, heads, width)`` each): ``"heads"``, a
    head's context norm over its width; ``"value_dim"``, a value channel's context norm
    over the heads, both averaged over positions; ``"key_dim"``, a query/key channel's
    share of the logits (mean |q| times mean |k|), its norm over the heads. ``mean``
    averages over the positions (default: all of them; a block's pass keeps those its
    padding mask keeps)."""
    mean = mean or (lambda a: a.mean(axis=1))
    logits = mean(np.abs(q)) * mean(np.abs(k))  # (batch, heads, key_dim)
    return {"heads": mean(np.sqrt(np.square(contexts).sum(axis=-1))),
            "value_dim": mean(np.sqrt(np.square(contexts).sum(axis=2))),
            "key_dim": np.sqrt(np.square(logits).sum(axis=1))}


def attention_scale(key_dim: int, keras: int, dtype) -> float:
    """The factor the layer multiplies query·key by, as the layer computes it."""
    scale = 1.0 / math.sqrt(float(key_dim))
    if keras == 3 or np.dtype(dtype) != np.float64:
        return float(np.float32(scale))
    return scale


def folded_scale(old_key_dim: int, new_key_dim: int, keras: int, dtype) -> float:
    """What the query is multiplied by so that scores at ``new_key_dim`` equal those at
    ``old_key_dim`` (with the deleted key channels zero)."""
    return attention_scale(old_key_dim, keras, dtype) / \
        attention_scale(new_key_dim, keras, dtype)


@register_rule("MultiHeadAttention")
class MultiHeadAttentionRule(LayerRule):
    flow = PRODUCER

    # ---- where each weight is -----------------------------------------------------------
    def _parts(self, info) -> dict:
        """``{part: (kernel index, bias index or None)}`` for query, key, gate, value,
        output."""
        names = ["query", "key"] + (["gate"] if info.config.get("use_gate") else []) + \
            ["value", "output"]
        bias = bool(info.config.get("use_bias", True))
        step = 2 if bias else 1
        return {n: (i * step, i * step + 1 if bias else None) for i, n in enumerate(names)}

    def _dims(self, info) -> tuple:
        heads, key_dim = int(info.config["num_heads"]), int(info.config["key_dim"])
        value_dim = int(info.config.get("value_dim") or key_dim)
        return heads, key_dim, value_dim

    def _roles(self, info) -> list:
        roles = list(info.input_roles)
        if len(roles) != len(info.input_shapes) or not all(roles):
            roles = list(_QKV[:len(info.input_shapes)])
        return roles

    def _out_config(self, info, out_dim: int) -> dict:
        shape = info.config.get("output_shape")
        return {"output_shape": out_dim if shape is None or isinstance(shape, int)
                else [out_dim]}

    # ---- channels ----------------------------------------------------------------------
    def flow_of(self, info) -> str:
        shape = info.config.get("output_shape")
        if shape is not None and not isinstance(shape, int) and len(shape) != 1:
            return "mixing"  # a multi-axis output projection: no channel axis of its own
        return PRODUCER

    def channels(self, info) -> int:
        return int(info.output_shape[-1])

    def input_blocked(self, info, index):
        role = self._roles(info)[index]
        if role not in _QKV:
            return f"reaches the {role or 'extra'} input of {info.describe()}"
        return None

    def cut_inputs(self, info, masks):
        parts, weights = self._parts(info), [w for w in info.weights]
        roles = self._roles(info)
        keeps = {r: channel_vector(m) for r, m in zip(roles, masks) if r in _QKV}
        keeps.setdefault("key", keeps.get("value"))
        if all(k is None or k.all() for k in keeps.values()):
            return None
        readers = {"query": ("query", "gate"), "key": ("key",), "value": ("value",)}
        for role, keep in keeps.items():
            for part in readers[role]:
                if part in parts and keep is not None:
                    k = parts[part][0]
                    weights[k] = weights[k][keep]
        return with_config(info.config, **self._out_config(info, self.channels(info))), \
            weights

    def cut_outputs(self, info, channels):
        weights = list(info.weights)
        kernel, bias = self._parts(info)["output"]
        weights[kernel] = np.delete(weights[kernel], channels, axis=-1)
        if bias is not None:
            weights[bias] = np.delete(weights[bias], channels, axis=-1)
        out_dim = self.channels(info) - len(channels)
        return with_config(info.config, **self._out_config(info, out_dim)), weights

    def zero_outputs(self, info, channels):
        weights = [w.copy() for w in info.weights]
        for index in self._parts(info)["output"]:
            if index is not None:
                weights[index][..., channels] = 0
        return weights

    def filter_matrix(self, info):
        kernel = info.weights[self._parts(info)["output"][0]]
        return kernel.reshape(-1, kernel.shape[-1]).T

    # ---- heads and head widths -----------------------------------------------------------
    def unit_axes(self, info) -> dict:
        heads, key_dim, value_dim = self._dims(info)
        return {"heads": heads, "key_dim": key_dim, "value_dim": value_dim}

    def interacting_axes(self, info) -> list:
        return [("heads", "key_dim"), ("heads", "value_dim")]

    def unit_slices(self, info, axis):
        parts = self._parts(info)

        def slices(names, kernel_axis, bias_axis):
            return [(i, kernel_axis if j == 0 else bias_axis)
                    for n in names for j, i in enumerate(parts[n]) if i is not None]
        if axis == "heads":
            return slices(["value"], -2, 0)
        if axis == "value_dim":
            return slices(["value"], -1, -1)
        if axis == "key_dim":
            return slices(["query", "key"], -1, -1)
        return super().unit_slices(info, axis)

    def unit_matrix(self, info, axis):
        if axis != "heads":
            parts = self._parts(info)
            if axis == "value_dim":  # the value channel and the output rows reading it
                rows = np.moveaxis(info.weights[parts["output"][0]], 1, 0)
                rows = rows.reshape(rows.shape[0], -1)
                return np.concatenate([super().unit_matrix(info, axis), rows], axis=1)
            return super().unit_matrix(info, axis)
        parts = self._parts(info)  # a head: its query, key and value kernels, its output rows
        rows = [np.moveaxis(info.weights[parts[n][0]], -2, 0) for n in ("query", "key", "value")]
        rows.append(info.weights[parts["output"][0]])
        return np.concatenate([r.reshape(r.shape[0], -1) for r in rows], axis=1)

    def cut_units(self, info, cuts):
        parts, weights = self._parts(info), list(info.weights)
        heads, key_dim, value_dim = self._dims(info)
        gone_heads = list(cuts.get("heads", ()))
        gone_keys = list(cuts.get("key_dim", ()))
        gone_values = list(cuts.get("value_dim", ()))

        def delete(part, head_axes, gone_width):
            kernel, bias = parts[part]
            for index, axes in ((kernel, head_axes[0]), (bias, head_axes[1])):
                if index is None:
                    continue
                w = np.delete(weights[index], gone_heads, axis=axes[0])
                weights[index] = np.delete(w, gone_width, axis=axes[1])
        for part in ("query", "key"):
            delete(part, ((-2, -1), (0, 1)), gone_keys)
        for part in ("gate", "value"):
            if part in parts:
                delete(part, ((-2, -1), (0, 1)), gone_values)
        out = parts["output"][0]
        weights[out] = np.delete(np.delete(weights[out], gone_heads, axis=0),
                                 gone_values, axis=1)
        new_key_dim = key_dim - len(gone_keys)
        if gone_keys:
            factor = folded_scale(key_dim, new_key_dim, info.keras, weights[0].dtype)
            for index in parts["query"]:
                if index is not None:
                    weights[index] = (weights[index] * factor).astype(weights[index].dtype)
        config = with_config(info.config, num_heads=heads - len(gone_heads),
                             key_dim=new_key_dim, value_dim=value_dim - len(gone_values),
                             **self._out_config(info, self.channels(info)))
        return config, weights

    # ---- activations (scores from data) ------------------------------------------------
    def unit_activations(self, info, inputs: list) -> dict:
        """Per example, from a NumPy pass over the weights on the call's ``inputs``
        (query, value[, key]; no attention mask: self-attention of full sequences):
        ``"heads"``, each head's context (before the output projection), its L2 norm over
        the head's width averaged over query positions; ``"value_dim"``, each value
        channel's context, its L2 norm over the heads averaged over query positions;
        ``"key_dim"``, each query/key channel's share of the attention logits (mean |q|
        times mean |k| over positions), its L2 norm over the heads."""
        if any(np.ndim(t) != 3 for t in inputs) or info.config.get("use_gate"):
            return {}  # attention over several axes, or gated: scored by weights
        scores: dict = {}
        self.heads_forward(info, inputs, scores)
        return scores

    def heads_forward(self, info, inputs: list, scores_out: Optional[dict] = None) -> tuple:
        """``(contexts (batch, tq, heads, value_dim), output (batch, tq, out))`` of the
        layer on ``inputs`` (a gated attention is not covered); ``scores_out``, when given,
        receives :meth:`unit_activations`' activations of the same pass."""
        parts, w = self._parts(info), [np.asarray(v, np.float64) for v in info.weights]
        given = dict(zip(self._roles(info), [np.asarray(t, np.float64) for t in inputs]))
        given.setdefault("value", given["query"])
        given.setdefault("key", given["value"])

        def project(part, x):
            kernel, bias = parts[part]
            y = np.einsum("btm,mnd->btnd", x, w[kernel])
            return y if bias is None else y + w[bias]
        q, k, v = (project(p, given[p]) for p in ("query", "key", "value"))
        scores = np.einsum("btnd,bsnd->bnts", q, k) / math.sqrt(q.shape[-1])
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        contexts = np.einsum("bnts,bsnd->btnd", scores / scores.sum(-1, keepdims=True), v)
        if scores_out is not None:
            scores_out.update(attention_scores(q, k, contexts))
        kernel, bias = parts["output"]
        out = np.einsum("btnd,ndo->bto", contexts, w[kernel])
        return contexts, out if bias is None else out + w[bias]

    # ---- costs -------------------------------------------------------------------------
    def flops(self, info) -> int:
        heads, key_dim, value_dim = self._dims(info)
        shapes = dict(zip(self._roles(info), info.input_shapes))
        query = shapes.get("query", info.input_shape)
        value = shapes.get("value", query)
        key = shapes.get("key", value)

        tq, tk = positions(query), positions(value)
        out = int(info.output_shape[-1])
        macs = tq * int(query[-1]) * heads * key_dim + tk * int(key[-1]) * heads * key_dim \
            + tk * int(value[-1]) * heads * value_dim + tq * tk * heads * (key_dim + value_dim) \
            + tq * heads * value_dim * out
        if info.config.get("use_gate"):
            macs += tq * int(query[-1]) * heads * value_dim
        return 2 * macs
