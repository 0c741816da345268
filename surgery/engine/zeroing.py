"""Zeroing the channels a surgery will delete: the equivalence oracle.

This module owns :func:`zero_channels`, which returns a copy of a model in which the
channels listed for deletion produce exact zeros everywhere they flow: each producer's
rule zeroes its own output channels, and each layer the zeros reach on the way is made to
keep them zero by its rule (BatchNormalization ``beta``/``moving_mean``, a depthwise
bias). Deleting those channels must then leave the model's outputs unchanged, which is
how :func:`surgery.verify` and the tests catch a wrong cut. Masks flow exactly as in
surgery, through the same rules. :func:`zeroed_weights` computes the same zeroing as new
weights without copying the model, for a caller that zeroes one working copy again and again
(the candidate plans of :mod:`surgery.calibration.stand_in`); :func:`zeroed_outputs` the
zeroed model's outputs without copying it at all (large Keras 3 models: one layer's zeroed
weights at a time).
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from surgery.engine.rules import PRODUCER, channel_vector, rule_for
from surgery.engine.rules.base import concrete
from surgery.engine.flatten import flattened
from surgery.engine.graph import ModelGraph, resolve


def zero_channels(model, deletions: Mapping[str, Sequence[int]],
                  units: Optional[Mapping[str, Mapping[str, Sequence[int]]]] = None):
    """A copy of ``model`` whose channels in ``deletions`` produce exact zeros, and whose
    heads / head widths in ``units`` (layer -> axis -> indices, ``PrunePlan.units``)
    contribute exactly nothing.

    Example::

        zeroed = surgery.zero_channels(model, {"block_1_expand": [0, 3]})
        pruned = surgery.delete_channels(model, "block_1_expand", [0, 3])
        np.testing.assert_allclose(zeroed.predict(x), pruned.predict(x), rtol=1e-5)
    """
    return zeroed_copy(resolve(model, "zero_channels"), deletions, units)


def zeroed_copy(graph: ModelGraph, deletions: Mapping[str, Sequence[int]],
                units: Optional[Mapping[str, Mapping[str, Sequence[int]]]] = None):
    """:func:`zero_channels` of a resolved graph (its model is untouched)."""
    flat = flattened(graph)
    clone = flat.with_model(graph.adapter.clone(flat.model))  # nested layers reachable
    changed = zeroed_weights(clone, deletions, units)
    graph.adapter.set_weights(changed.items())
    return clone.model


def zeroed_weights(graph: ModelGraph, deletions: Mapping[str, Sequence[int]],
                   units: Optional[Mapping[str, Mapping[str, Sequence[int]]]] = None,
                   keep: Optional[Callable] = None) -> dict:
    """The weights that zero ``deletions`` and ``units`` (as in :func:`zero_channels`) in
    ``graph``'s model, which must be flat: ``{layer: new weights}`` for every layer that
    changes, computed from the layers' rules and current weights; nothing is set, so
    ``graph.adapter.set_weights(result.items())`` zeroes the model in place. With
    ``keep``, only the layers it accepts are in the result (the others' new weights are
    dropped once their call is zeroed, so that they are never all held at once).

    >>> from surgery._backend import keras
    >>> from surgery.engine.graph import resolve
    >>> x = keras.Input((3,)); d = keras.layers.Dense(3, name="d")
    >>> m = keras.Model(x, keras.layers.Dense(2, name="e")(d(x)))
    >>> changed = zeroed_weights(resolve(m), {"d": [1]})
    >>> [l.name for l in changed], bool(changed[d][0][:, 1].any())
    (['d'], False)
    """
    changed: dict = {}  # layer -> new weights
    zero = _zeroing(deletions, units, changed)

    def visit(node, masks):
        out = zero(node, masks)
        if keep is not None and not keep(node.layer):
            changed.pop(node.layer, None)
        return out

    graph.walk(visit, lambda t: None)
    return changed


def _zeroing(deletions: Mapping, units: Optional[Mapping], changed: dict) -> Callable:
    """The visit of :func:`zeroed_weights`: zeroes one call (its new weights into
    ``changed``, composed with those of the layer's earlier calls) and returns its
    outbound mask."""

    def visit(node, masks):
        info = node.info
        if node.layer in changed:
            info = info.replaced(info.config, changed[node.layer])
        rule = rule_for(info)
        out = None
        if rule is not None and any(m is not None for m in masks):
            full = [np.ones(concrete(s), bool) if m is None else m
                    for m, s in zip(masks, info.input_shapes)]
            out = rule.propagate(info, full, strict=False)
            if rule.flow_of(info) != PRODUCER:
                weights = rule.zero_inputs(info, channel_vector(full[0],
                                                                rule.channel_axis(info)))
                if weights is not None:
                    changed[node.layer] = weights
                    info = info.replaced(info.config, weights)
        cuts = {a: list(v) for a, v in (units or {}).get(info.name, {}).items() if len(v)}
        if cuts and rule is not None:
            changed[node.layer] = rule.zero_units(info, cuts)
            info = info.replaced(info.config, changed[node.layer])
        channels = list(deletions.get(info.name, ()))
        if channels and rule is not None and rule.flow_of(info) == PRODUCER:
            changed[node.layer] = rule.zero_outputs(info, channels)
            out = np.ones(concrete(info.output_shape), bool)
            np.moveaxis(out, rule.channel_axis(info), -1)[..., channels] = False
        if out is not None and out.all():
            out = None
        return out

    return visit


def zeroed_outputs(graph: ModelGraph, deletions: Mapping[str, Sequence[int]],
                   units: Optional[Mapping[str, Mapping[str, Sequence[int]]]], x) -> list:
    """The outputs, at inference on ``x``, of :func:`zeroed_copy` of ``graph`` (a Keras 3
    model), as float64 arrays (:func:`output_leaves` order), without that copy: one walk
    zeroes each call and runs it at once with its zeroed weights (the layer's variables are
    untouched), so one layer's zeroed weights exist at a time, not a second model. A layer
    called more than once (shared) is zeroed over all its calls first. Each call runs on
    its own (eagerly), as ``model(x)`` would run it."""
    flat = flattened(graph)
    adapter, model = flat.adapter, flat.model
    counts = Counter(id(n.layer) for n in flat.calls())
    shared = {id(layer) for layer in model.layers
              if counts[id(layer)] > 1 and getattr(layer, "weights", None)}
    final = zeroed_weights(flat, deletions, units,
                           keep=lambda layer: id(layer) in shared) if shared else {}
    changed: dict = {}
    masks: dict = {}  # tensor key -> mask of the zeroed channels it carries
    zero = _zeroing(deletions, units, changed)

    def run(node, tensors):
        mask = zero(node, [masks.get(k) for k in node.input_keys])
        masks.update(dict.fromkeys(node.output_keys, mask))
        weights = (final.get(node.layer) if id(node.layer) in shared
                   else changed.pop(node.layer, None))  # popped: freed once it has run
        return node.run(tensors, weights)

    return [to_numpy(o) for o in output_leaves(adapter.run_calls(model, x, run))]


def to_numpy(value) -> np.ndarray:
    """``value`` (a NumPy array, or a TensorFlow, JAX or PyTorch tensor) as float64 NumPy."""
    if hasattr(value, "detach"):  # a PyTorch tensor may require grad and live off the CPU
        value = value.detach().cpu()
    return np.asarray(value, np.float64)


def output_leaves(value) -> list:
    """The arrays of a model output: one, a list/tuple, or a dict (keras-hub backbones),
    in a fixed order."""
    if isinstance(value, dict):
        return [leaf for k in sorted(value) for leaf in output_leaves(value[k])]
    if isinstance(value, (list, tuple)):
        return [leaf for v in value for leaf in output_leaves(v)]
    return [value]


def max_relative_difference(a, b) -> float:
    """max |a - b| / max |a| over all outputs (0 when both are all zero)."""
    a, b = output_leaves(a), output_leaves(b)
    a, b = [to_numpy(x) for x in a], [to_numpy(y) for y in b]
    num = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
    den = max(float(np.max(np.abs(x))) for x in a)
    return num / den if den > 0 else num
