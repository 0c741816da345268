"""Bias compensation (FLAP): a removed unit's mean output folded into the next bias.

A removed channel or MLP unit took its output with it; what it gave on average need not
be lost. Its mean output over calibration data, times the weights that read it, is a
constant its reader can add to its bias (An et al. 2024, FLAP), so the cut model needs no
retraining to keep it. This module owns measuring those means (:func:`measure`, which
``surgery.plan(..., compensate=True, data=...)`` records in ``settings["compensation"]``)
and the compensated copy of a model (:func:`compensated`): the original with each reader's
bias shifted, which ``apply`` cuts and ``verify`` zeroes in place of the original, so the
equivalence oracle still holds exactly. It is exact to state only where the reader is
linear in the removed units, so only these are compensated: a channel group whose every
reader, of every producer, is a layer that folds last-axis inputs into its bias
(``Dense`` with a bias; its means are those of the producer's output), and a keras-hub ViT or DeiT block's MLP units
(folded into its second Dense). Other groups are left as they are and listed in
``settings["compensation"]["skipped"]``.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from surgery.engine.flatten import flattened
from surgery.engine.graph import ModelGraph
from surgery.engine.rules import rule_for
from surgery.errors import SurgeryError
from surgery.pruning.criteria._data import _iter_batches
from surgery.pruning.criteria._forward import forward
from surgery.pruning.plan import CHANNELS, PrunePlan

logger = logging.getLogger(__name__)

#: calibration examples the means are measured on (at most)
MAX_EXAMPLES = 512


def _readers(graph: ModelGraph, producer: str) -> list:
    """The calls that read ``producer``'s output, if every one of them can fold its
    inputs into a bias (else ``[]``)."""
    node = next(n for n in graph.calls() if n.layer.name == producer)
    readers = graph.consumers(node)
    foldable = readers and all(
        len(r.input_keys) == 1 and rule_for(r.info) is not None and
        rule_for(r.info).fold_inputs(r.info, [0], [0.0]) is not None for r in readers)
    return readers if foldable else []


def measure(graph: ModelGraph, plan: PrunePlan, data: Any) -> dict:
    """``{"channels": {producer: {"units": [...], "means": [...]}}, "units": {layer:
    {axis: {...}}}, "skipped": [...]}``: the mean output of every removed unit that can
    be compensated, over at most :data:`MAX_EXAMPLES` examples of ``data``."""
    flat = flattened(graph)
    nodes = {n.layer.name: n for n in flat.calls()}
    channels, units, skipped = {}, {}, []
    for cut in plan.cuts:
        if not cut.removed:
            continue
        if cut.unit == CHANNELS:  # the whole group, or none of it
            if all(_readers(flat, producer) for producer in cut.layers):
                channels.update({p: list(gone) for p, gone in cut.layers.items()})
            else:
                skipped.append(cut.group)
        else:
            layer, axis = next(iter(cut.layers)), cut.unit
            info = nodes[layer].info
            if rule_for(info).fold_units(info, axis, [0], [0.0]) is None:
                skipped.append(cut.group)
            else:
                units.setdefault(layer, {})[axis] = list(cut.layers[layer])
    sums, count = _means(flat, nodes, channels, units, data)
    out = {"channels": {p: dict(units=c, means=(sums[p][c] / count).tolist())
                        for p, c in channels.items()},
           "units": {layer: {a: dict(units=u, means=(sums[(layer, a)][u] / count).tolist())
                             for a, u in axes.items()} for layer, axes in units.items()},
           "skipped": sorted(set(skipped)), "examples": int(count)}
    logger.info("compensation: %d channel groups and %d unit axes folded into biases, %d "
                "left as they are, from %d examples", len(channels),
                sum(len(a) for a in units.values()), len(out["skipped"]), count)
    return out


def _means(flat: ModelGraph, nodes: dict, channels: dict, units: dict, data) -> tuple:
    """Summed outputs (per producer channel; per unit of each axis) and the count."""
    tensors = [nodes[p].outputs[0] for p in channels] + \
        [t for layer in units for t in nodes[layer].inputs]
    if not tensors:
        return {}, 1
    probe, sums, count = flat.submodel(tensors), {}, 0
    for x, _ in _iter_batches(data, MAX_EXAMPLES, 32):
        values = forward(flat, probe, x)
        for p, v in zip(channels, values):  # each example's mean over its positions
            v = np.asarray(v, np.float64)
            sums[p] = sums.get(p, 0) + v.reshape(v.shape[0], -1, v.shape[-1]).mean(1).sum(0)
        at = len(channels)
        for layer, axes in units.items():
            node = nodes[layer]
            inputs, at = values[at:at + len(node.inputs)], at + len(node.inputs)
            per_example = rule_for(node.info).unit_means(node.info, inputs)
            for axis in axes:
                sums[(layer, axis)] = sums.get((layer, axis), 0) + \
                    per_example[axis].sum(axis=0)
        count += len(np.asarray(values[0]))
    if count == 0:
        raise SurgeryError("plan(compensate=True): data= yielded no examples; pass "
                           "calibration inputs (an array, a list of batches or a dataset)")
    return sums, count


def compensated(graph: ModelGraph, plan: PrunePlan) -> ModelGraph:
    """A flat copy of ``graph``'s model whose readers' biases hold the plan's recorded
    means (``settings["compensation"]``); the graph itself when there are none."""
    record = plan.settings.get("compensation")
    flat = flattened(graph)
    if not record:
        return flat
    clone = flat.with_model(graph.adapter.clone(flat.model))
    nodes = {n.layer.name: n for n in clone.calls()}
    changed: dict = {}
    for producer, entry in record["channels"].items():
        for reader in _readers(clone, producer):
            info = reader.info.replaced(reader.info.config, changed.get(reader.layer)) \
                if reader.layer in changed else reader.info
            changed[reader.layer] = rule_for(info).fold_inputs(info, entry["units"],
                                                               entry["means"])
    for layer, axes in record["units"].items():
        node = nodes[layer]
        for axis, entry in axes.items():
            info = node.info.replaced(node.info.config, changed.get(node.layer)) \
                if node.layer in changed else node.info
            changed[node.layer] = rule_for(info).fold_units(info, axis, entry["units"],
                                                            entry["means"])
    graph.adapter.set_weights(changed.items())
    return clone
