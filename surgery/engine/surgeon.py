"""``surgery.Surgeon``: kerassurgeon's Surgeon, cutting every layer with its layer rule.

This module owns one surgery pass on a Keras 2 model. It keeps kerassurgeon's interface
(``add_job`` / ``operate``, the four jobs, boolean delete masks; stock ``add_job`` still
validates the jobs) and changes how the pass runs:

* **rules** — every layer is cut by its :mod:`~surgery.engine.rules` rule: its inbound
  masks cut its input side, a ``delete_channels`` job its output side, both as pure
  functions of config and weights; a layer no rule knows raises
  :class:`~surgery.errors.UnsupportedLayerError` naming it and the way out;
* **one walk, input untouched** — ``operate`` visits every node once in topological order
  through the Keras 2 graph adapter, calls each layer with the node's original arguments
  (so ``x + y`` ops rebuild correctly), and builds the result from fresh layers whose
  weights are set in one batch, so the input model's layers never gain nodes and the two
  models never share weights (a layer whose config cannot rebuild it is refused with a
  :class:`~surgery.errors.SurgeryError`); a shared layer stays shared;
* **checked jobs** — bad channel indices, deleting every channel, subclassed models and
  layers inside nested models are refused with :class:`~surgery.errors.SurgeryError`.
"""
from __future__ import annotations

from typing import Iterable, Union

import numpy as np

from surgery import patches
from surgery._backend import keras, require_legacy_tf_keras
from surgery.errors import SurgeryError, UnsupportedLayerError
from surgery.engine import keras2
from surgery.engine.cutting import checked_channels, checked_units, cut

require_legacy_tf_keras("surgery.Surgeon (kerassurgeon)")
patches.apply_all()
import kerassurgeon  # noqa: E402  (after the patches, which import it quietly)

require_functional = keras2.require_functional


class Surgeon(kerassurgeon.Surgeon):
    """Performs channel and layer surgery on a functional or Sequential model.

    Same jobs as kerassurgeon (``delete_channels``, ``delete_layer``, ``insert_layer``,
    ``replace_layer``); layers may be given as objects or names. ``operate`` returns a
    new functional model with fresh layers and copied weights; the input model is never
    modified. ``copy`` is accepted for kerassurgeon compatibility and has no effect.

    Example::

        surgeon = surgery.Surgeon(model)
        surgeon.add_job("delete_channels", "block_1_expand", channels=[0, 3])
        smaller = surgeon.operate()
    """

    def __init__(self, model: keras.Model, copy=None):
        require_functional(model)
        super().__init__(model, copy=False)
        self._nodes = keras2.nodes(model)
        self._jobs: dict = {}  # layer -> (job, kwargs, node positions or None)
        self._units: dict = {}  # layer -> {unit axis: indices} (heads, head widths)

    # ---- jobs --------------------------------------------------------------------------
    def add_job(self, job: str, layer, *, channels: Iterable[int] = None, new_layer=None,
                node_indices=None) -> None:
        layer = self._resolve(layer)
        if job == "delete_channels":
            channels = self._checked_channels(layer, channels)
        try:
            super().add_job(job, layer, channels=channels, new_layer=new_layer,
                            node_indices=node_indices)
        except ValueError as err:
            raise SurgeryError(f"cannot add job '{job}' for layer '{layer.name}' "
                               f"({type(layer).__name__}): {err}") from err
        calls = [n for n in self._nodes if n.layer is layer and not n.is_input]
        chosen = None if not node_indices else {calls[i].identity for i in node_indices
                                                if i < len(calls)}
        self._jobs[layer] = (job, dict(channels=channels, new_layer=new_layer), chosen)

    def delete_units(self, layer, units) -> None:
        """Delete units that no tensor carries from ``layer``: ``units`` is ``{axis:
        indices}`` (``{"heads": [1, 3]}`` for a MultiHeadAttention; see
        ``PrunePlan.units``)."""
        layer = self._resolve(layer)
        node = next(n for n in self._nodes if n.layer is layer and not n.is_input)
        self._units[layer] = checked_units(node.info, units)

    def _resolve(self, layer):
        if isinstance(layer, str):
            try:
                return self.model.get_layer(layer)
            except ValueError:
                raise SurgeryError(f"model '{self.model.name}' has no layer named "
                                   f"'{layer}'") from None
        if layer not in self.model.layers:
            nested = [m.name for m in self.model.layers
                      if keras2.is_nested(m) and layer in m.layers]
            where = (f"; it is inside the nested model '{nested[0]}' — flatten it first with "
                     "surgery.flatten_model(model)") if nested else ""
            raise SurgeryError(f"layer '{layer.name}' ({type(layer).__name__}) is not a "
                               f"layer of model '{self.model.name}'{where}")
        return layer

    def _checked_channels(self, layer, channels) -> list[int]:
        node = next(n for n in self._nodes if n.layer is layer and not n.is_input)
        return checked_channels(node.info, channels)

    # ---- the pass ----------------------------------------------------------------------
    def operate(self) -> keras.Model:
        model = self.model
        self._built: dict = {}     # original layer -> new layer (shared layers stay shared)
        self._weights: list = []   # (new layer, weights) set after the graph is built
        new_inputs = keras2.fresh_inputs(model)
        start = {keras2.key(old): new for old, new in zip(model.inputs, new_inputs)}
        values = keras2.walk(model, self._rebuild_node,
                             lambda t: (start[keras2.key(t)], None))
        keras2.set_weights(self._weights)
        outputs = [values[keras2.key(t)][0] for t in model.outputs]
        return keras2.build_model(model, new_inputs, outputs)

    def _job(self, node):
        job = self._jobs.get(node.layer)
        if job is None or (job[2] is not None and node.identity not in job[2]):
            return None, {}
        return job[0], job[1]

    def _rebuild_node(self, node, inbound):
        tensors = [t for t, _ in inbound]
        masks = [m for _, m in inbound]
        job, kwargs = self._job(node)
        if job == "delete_layer":
            if len(tensors) != 1:
                raise SurgeryError(f"cannot delete layer '{node.layer.name}': it has "
                                   f"{len(tensors)} inputs")
            return [(tensors[0], masks[0])]
        if job == "replace_layer":
            mask = masks[0] if len(masks) == 1 else None
            return [(t, mask) for t in self._call(node, kwargs["new_layer"], tensors)]
        if job == "insert_layer":
            if len(tensors) != 1:
                raise SurgeryError(f"cannot insert before layer '{node.layer.name}': it has "
                                   f"{len(tensors)} inputs")
            tensors = self._call(node, kwargs["new_layer"], tensors, plain=True)
        layer, mask = self._cut(node, masks, kwargs.get("channels") if
                                job == "delete_channels" else None)
        return [(t, mask) for t in self._call(node, layer, tensors)]

    def _cut(self, node, masks, channels):
        """The new layer for this call and its outbound mask."""
        replacement, mask = cut(node.info, masks, channels, keras2.is_nested(node.layer),
                                self._units.get(node.layer))
        return self._layer_for(node.layer, replacement), mask

    def _layer_for(self, layer, replacement):
        if layer in self._built:  # a shared layer: one new layer for every call
            return self._built[layer]
        if replacement is None:
            new = keras2.carried(layer)
            if new is not layer:
                self._weights.append((new, layer.get_weights()))
        elif isinstance(replacement, tuple):
            config, weights = replacement
            new = keras2.new_layer(layer, config)
            if weights is not None:
                self._weights.append((new, weights))
        else:  # a layer object from an old-style handler, holding its own weights
            new = replacement
        self._built[layer] = new
        return new

    def _call(self, node, layer, tensors, plain: bool = False):
        try:
            return [layer(tensors[0])] if plain else node.call(layer, tensors)
        except Exception as err:  # a cut that Keras cannot wire up: say where
            raise SurgeryError(f"rebuilding layer '{layer.name}' ({type(layer).__name__}) "
                               f"after channel deletion failed: {err}") from err


def delete_channels(model: keras.Model, layer: Union[str, "keras.layers.Layer"],
                    channels: Iterable[int]) -> keras.Model:
    """Delete ``channels`` from ``layer`` (and the weights that read them downstream).

    Example::

        smaller = surgery.delete_channels(model, "conv1", [0, 5, 7])
    """
    surgeon = Surgeon(model)
    surgeon.add_job("delete_channels", layer, channels=channels)
    return surgeon.operate()
