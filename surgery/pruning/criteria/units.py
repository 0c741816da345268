"""Scoring units that no tensor carries: attention heads, head widths, MLP widths, blocks.

A layer's rule names its unit axes (``LayerRule.unit_axes``: MultiHeadAttention's
``heads``, ``key_dim``, ``value_dim``) and, per axis, the weights whose entries are zeroed
to remove a unit (``unit_slices``). This module owns :func:`unit_scores`, one float per
unit (higher = keep), with the plan's criterion read as:

* ``l1`` / ``l2`` / ``fpgm`` — over the unit's weights (``unit_matrix``: a head's query,
  key and value kernels and its output rows), as for output channels;
* ``taylor`` — the first-order change of the loss when the unit is zeroed, from the
  gradient of the loss w.r.t. the layer's weights: ``|sum_w g_w * w|`` over the entries
  :meth:`zero_units` zeroes, per batch, averaged (Molchanov et al. 2019's group Taylor);
* ``activation`` — Minitron's: what the unit outputs, per example (a head's context
  norm, an MLP unit's mean |activation| over the tokens, a block's mean change of the
  residual stream: the rule's ``unit_activations``, a NumPy pass over its weights on the
  layer's inputs), then the L2 norm over the examples; it needs no labels;
* any other criterion (and ``activation`` where a rule cannot say) scores units with
  ``l1`` (logged once). Whole blocks are scored by their branches' output weights under
  ``taylor``.

Within a group the planner divides the scores by their mean
(:func:`surgery.pruning.policies.normalised`), so heads, MLP units, blocks and channels
compete in one ranking on a common scale: a unit at the mean of its kind scores 1.

It also owns :func:`unit_axis_wanted`, which of the unit axes a plan's ``heads`` /
``head_dims`` switches turn on, and :func:`unit_kind`, the kind a unit axis rounds as.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from surgery.engine.graph import ModelGraph
from surgery.engine.rules import rule_for
from surgery.pruning.criteria._data import _iter_batches, _require_data
from surgery.pruning.criteria._forward import forward, weight_gradients
from surgery.pruning.criteria.activations import _output_is_probability
from surgery.pruning.criteria._registry import DEFAULT_BATCH_SIZE, DEFAULT_MAX_SAMPLES, logger

#: unit axes that are whole heads, and those that are the width of every head
HEAD_AXES = ("heads",)
HEAD_WIDTH_AXES = ("key_dim", "value_dim", "head_dim")


def unit_axis_wanted(axis: str, heads: bool, head_dims: bool, depth: bool = False,
                     query_groups: bool = False) -> bool:
    """Whether a plan with these switches prunes unit ``axis`` (MLP widths always). A
    composite layer names its blocks' axes ``"<block>/<axis>"``, and its blocks
    themselves ``"blocks"`` (``depth``); grouped-query attention its key/value groups
    ``"query_groups"``.

    >>> unit_axis_wanted("heads", True, False), unit_axis_wanted("key_dim", True, False)
    (True, False)
    >>> unit_axis_wanted("transformer_block_1/heads", False, False)
    False
    >>> unit_axis_wanted("blocks", True, True), unit_axis_wanted("blocks", True, True, True)
    (False, True)
    """
    kind = unit_kind(axis)
    return dict(heads=heads, head_dims=head_dims, blocks=depth,
                query_groups=query_groups).get(kind, True)


#: unit axes that are whole key/value groups of grouped-query attention
GROUP_AXES = ("query_groups",)
#: the kinds of unit a plan rounds separately (``round_to={"mlp": 64, "channels": 8}``)
UNIT_KINDS = ("channels", "heads", "query_groups", "head_dims", "mlp", "blocks")


def unit_kind(axis: Optional[str]) -> str:
    """The kind of a group's units, by its axis (``None``: channels); every unit axis
    that is neither heads, head widths nor blocks is an MLP width.

    >>> unit_kind(None), unit_kind("block_0/heads"), unit_kind("intermediate_dim")
    ('channels', 'heads', 'mlp')
    """
    if axis is None:
        return "channels"
    axis = axis.rpartition("/")[2]
    if axis in HEAD_AXES:
        return "heads"
    if axis in HEAD_WIDTH_AXES:
        return "head_dims"
    if axis in GROUP_AXES:
        return "query_groups"
    return "blocks" if axis == "blocks" else "mlp"


def _infos(graph: ModelGraph) -> dict:
    return {n.layer.name: n for n in graph.calls()}


def _per_unit(weights: list, slices: list, size: int) -> np.ndarray:
    """``sum`` of ``weights[i]`` over every axis but ``a``, for each ``(i, a)``."""
    total = np.zeros(size)
    for i, a in slices:
        w = np.moveaxis(np.asarray(weights[i], np.float64), a, 0)
        total += w.reshape(size, -1).sum(axis=1)
    return total


def unit_scores(graph: ModelGraph, targets: Sequence[tuple], criterion: Any = "l1", data=None, *,
                max_samples: int = DEFAULT_MAX_SAMPLES, batch_size: int = DEFAULT_BATCH_SIZE
                ) -> dict[str, np.ndarray]:
    """Scores of the units of ``targets`` (``(layer name, axis)`` pairs), keyed
    ``"layer:axis"``; higher = keep.

    >>> from surgery._backend import keras
    >>> from surgery.engine.graph import resolve
    >>> q = keras.Input((5, 8))
    >>> m = keras.Model(q, keras.layers.MultiHeadAttention(4, 2, name="mha")(q, q))
    >>> unit_scores(resolve(m), [("mha", "heads")], "l2")["mha:heads"].shape
    (4,)
    """
    nodes = _infos(graph)
    name = criterion if isinstance(criterion, str) else getattr(criterion, "__name__", "")
    out: dict[str, np.ndarray] = {}
    if name == "taylor":
        return _taylor(graph, targets, nodes, data, max_samples, batch_size)
    if name == "activation":
        out = _activations(graph, targets, nodes, data, max_samples, batch_size)
        targets = [t for t in targets if f"{t[0]}:{t[1]}" not in out]
        if targets:
            logger.warning("activation: no activations of %s to score; scored with l1",
                           ", ".join(f"{layer}:{axis}" for layer, axis in targets))
    elif name not in ("l1", "l2", "fpgm"):
        logger.warning("criterion %r scores output channels only; heads and head widths "
                       "are scored with l1", name)
    for layer, axis in targets:
        info = nodes[layer].info
        w = np.asarray(rule_for(info).unit_matrix(info, axis), np.float64)
        if name == "l2":
            s = np.sqrt(np.square(w).sum(axis=1))
        elif name == "fpgm":
            sq = np.square(w).sum(axis=1)
            s = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * w @ w.T, 0)).sum(axis=1)
        else:
            s = np.abs(w).sum(axis=1)
        out[f"{layer}:{axis}"] = s
    return out


def _activations(graph: ModelGraph, targets, nodes, data, max_samples, batch_size
                 ) -> dict[str, np.ndarray]:
    """Minitron's aggregation for units: the rule's per-example magnitude of each unit
    (:meth:`~surgery.engine.rules.base.LayerRule.unit_activations`, on the call's inputs
    captured by one probe), then the L2 norm over the examples. Targets the rule cannot
    score are left out."""
    _require_data("activation", data)
    layers = list(dict.fromkeys(layer for layer, _ in targets))
    probe = graph.submodel([t for layer in layers for t in nodes[layer].inputs])
    sums: dict[str, np.ndarray] = {}
    for x, _ in _iter_batches(data, max_samples, batch_size):
        values, at = forward(graph, probe, x), 0
        for layer in layers:
            node = nodes[layer]
            inputs, at = values[at:at + len(node.inputs)], at + len(node.inputs)
            acts = rule_for(node.info).unit_activations(node.info, inputs)
            for axis in [a for l, a in targets if l == layer and a in acts]:
                squares = np.square(np.asarray(acts[axis], np.float64)).sum(axis=0)
                key = f"{layer}:{axis}"
                sums[key] = squares if key not in sums else sums[key] + squares
    return {k: np.sqrt(v) for k, v in sums.items()}


def _taylor(graph: ModelGraph, targets, nodes, data, max_samples, batch_size) -> dict[str, np.ndarray]:
    _require_data("taylor", data)
    # a unit zeroed otherwise than by slices (a whole block) is scored by its weights
    sliced = [(l, a) for l, a in targets if unit_kind(a) != "blocks"]
    layers = list(dict.fromkeys(layer for layer, _ in sliced))
    probabilities = _output_is_probability(graph)
    sums: dict[str, Optional[np.ndarray]] = {f"{l}:{a}": None for l, a in sliced}
    batches = 0
    for x, y in _iter_batches(data, max_samples, batch_size):
        if y is None:
            raise ValueError("taylor needs labels: pass data= as (x, y) or (x, y) batches")
        grads = weight_gradients(graph, [nodes[l].layer for l in layers], x, y, probabilities)
        for layer, axis in sliced:
            info = nodes[layer].info
            rule = rule_for(info)
            size = rule.unit_axes(info)[axis]
            products = [np.asarray(w, np.float64) * np.asarray(g, np.float64)
                        for w, g in zip(info.weights, grads[layer])]
            s = np.abs(_per_unit(products, rule.unit_slices(info, axis), size))
            key = f"{layer}:{axis}"
            sums[key] = s if sums[key] is None else sums[key] + s
        batches += 1
    if batches == 0:
        raise ValueError("taylor: data= yielded no examples")
    others = [t for t in targets if t not in sliced]
    if others:
        logger.info("taylor: whole blocks (%s) are scored by their branches' output weights "
                    "(l1)", ", ".join(f"{layer}:{axis}" for layer, axis in others))
    return dict({k: v / batches for k, v in sums.items()},
                **(unit_scores(graph, others, "l1") if others else {}))
