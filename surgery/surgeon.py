"""``surgery.Surgeon``: stock kerassurgeon's Surgeon with our handler registry in front.

This module owns one surgery pass. It keeps kerassurgeon's interface (``add_job`` /
``operate``, the four jobs, boolean delete masks) and its layer branches, and changes three
things about how the pass runs:

* **handlers first** — ``_apply_delete_mask`` asks :mod:`surgery.registry` before falling
  back to the stock branches, and turns stock's "unsupported" ``ValueError`` into an
  :class:`~surgery.errors.UnsupportedLayerError` that names the layer and the way out;
* **one walk, input untouched** — ``operate`` visits every node once in topological order
  (stock rebuilds a sub-graph per job and finds node depths by linear search), calls each
  layer with the node's original call arguments (so ``TFOpLambda`` ops like ``x + y``
  rebuild correctly), and builds the result from *copies* of the unchanged layers, so the
  input model's layers never gain nodes and the two models never share weights;
* **checked jobs** — bad channel indices, deleting every channel, subclassed models and
  layers inside nested models are refused with :class:`~surgery.errors.SurgeryError`.
"""
from __future__ import annotations

import contextlib
import io
import logging
from typing import Iterable, Union

import numpy as np

from surgery import patches
from surgery._backend import keras, tf
from surgery.errors import SurgeryError, UnsupportedLayerError
from surgery import registry

patches.apply_all()
import kerassurgeon  # noqa: E402  (after the patches, which import it quietly)

_log = logging.getLogger(__name__)


def require_functional(model) -> None:
    """Refuse models whose graph surgery cannot see (subclassed, or never built)."""
    if not isinstance(model, keras.Model):
        raise SurgeryError(f"expected a keras.Model, got {type(model).__name__}")
    if not getattr(model, "_is_graph_network", False):
        raise SurgeryError(
            f"model '{model.name}' ({type(model).__name__}) is not a functional model: a "
            "subclassed model's graph is Python code that surgery cannot see, and a "
            "Sequential model must be built with an input shape first. Rebuild it with the "
            "functional API (keras.Input(...) → layers → keras.Model) or give the Sequential "
            "model an Input layer.")


def channel_count(layer) -> int:
    """Number of output channels a layer can lose (``filters`` or ``units``)."""
    config = layer.get_config()
    for attr in ("filters", "units"):
        if attr in config:
            return int(config[attr])
    raise UnsupportedLayerError(
        layer, "it has no output channels (filters or units) of its own to delete; delete "
               "them at the layer that produces them")


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

    def _resolve(self, layer):
        if isinstance(layer, str):
            try:
                return self.model.get_layer(layer)
            except ValueError:
                raise SurgeryError(f"model '{self.model.name}' has no layer named "
                                   f"'{layer}'") from None
        if layer not in self.model.layers:
            nested = [m.name for m in self.model.layers
                      if isinstance(m, keras.Model) and layer in m.layers]
            where = (f"; it is inside the nested model '{nested[0]}' — flatten it first with "
                     "surgery.flatten_model(model)") if nested else ""
            raise SurgeryError(f"layer '{layer.name}' ({type(layer).__name__}) is not a "
                               f"layer of model '{self.model.name}'{where}")
        return layer

    @staticmethod
    def _checked_channels(layer, channels) -> list[int]:
        total = channel_count(layer)
        if channels is None:
            raise SurgeryError(f"delete_channels on layer '{layer.name}' needs channels=[...]")
        chosen = sorted({int(c) for c in np.asarray(list(channels)).reshape(-1)})
        bad = [c for c in chosen if not 0 <= c < total]
        if bad:
            raise SurgeryError(
                f"channel indices {bad} are out of range for layer '{layer.name}' "
                f"({type(layer).__name__}), which has {total} channels (0..{total - 1}).")
        if len(chosen) == total:
            raise SurgeryError(
                f"deleting all {total} channels of layer '{layer.name}' "
                f"({type(layer).__name__}) would disconnect the model; keep at least one "
                "(surgery.plan's min_channels does this).")
        return chosen

    # ---- the pass ----------------------------------------------------------------------
    def operate(self) -> keras.Model:
        model = self.model
        depth = {node: d for d, nodes in model._nodes_by_depth.items() for node in nodes}
        jobs = {node: (self._mod_func_map[node].__name__, self._kwargs_map[node])
                for node in self.nodes}
        produced: dict[int, tuple] = {}  # id(old KerasTensor) -> (new tensor, mask)
        self._copies: dict = {}  # original layer -> fresh copy (unchanged layers)

        new_inputs = []
        for old in model.inputs:
            layer = old._keras_history.layer
            new = keras.Input(batch_shape=old.shape, dtype=old.dtype, name=layer.name,
                              sparse=getattr(layer, "sparse", False),
                              ragged=getattr(layer, "ragged", False))
            produced[id(old)] = (new, None)
            new_inputs.append(new)

        for node in sorted(depth, key=depth.get, reverse=True):
            if node.is_input:
                continue
            inbound = [produced[id(t)] for t in node.keras_inputs]
            job, kwargs = jobs.get(node, (None, {}))
            outputs, mask = self._rebuild_node(node, inbound, job, kwargs)
            for old, new in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(outputs)):
                produced[id(old)] = (new, mask)

        keras.backend.batch_set_value(
            [pair for original, copy in self._copies.items()
             for pair in zip(copy.weights, original.get_weights())])
        new_outputs = [produced[id(t)][0] for t in model.outputs]
        return keras.Model(tf.nest.pack_sequence_as(model._nested_inputs, new_inputs),
                           tf.nest.pack_sequence_as(model._nested_outputs, new_outputs),
                           name=model.name)

    def _rebuild_node(self, node, inbound, job, kwargs):
        tensors = [t for t, _ in inbound]
        masks = [m for _, m in inbound]
        layer = node.outbound_layer
        if job == "_delete_layer":
            if len(tensors) != 1:
                raise SurgeryError(f"cannot delete layer '{layer.name}': it has "
                                   f"{len(tensors)} inputs")
            return tensors[0], masks[0]
        if job == "_replace_layer":
            return self._call(node, kwargs["new_layer"], tensors), \
                kerassurgeon.utils.single_element(masks)
        if job == "_insert_layer":
            if len(tensors) != 1:
                raise SurgeryError(f"cannot insert before layer '{layer.name}': it has "
                                   f"{len(tensors)} inputs")
            tensors = [self._call_layer(kwargs["new_layer"], tensors[0])]

        new_layer, mask = self._apply_delete_mask(node, masks)
        if job == "_delete_channels":
            if layer not in self._new_layers_map:
                if new_layer is not layer:  # cut on its input side: build to hold weights
                    self._call(node, new_layer, tensors)
                self._new_layers_map[layer] = self._delete_channel_weights(
                    new_layer, kwargs["channels"])
            new_layer = self._new_layers_map[layer]
            mask = self._output_delete_mask(node, kwargs["channels"])
        elif new_layer is layer:
            new_layer = self._copy_of(layer)
        return self._call(node, new_layer, tensors), mask

    def _copy_of(self, layer):
        """A fresh layer with ``layer``'s config; its weights are copied after the pass."""
        if layer not in self._copies:
            self._copies[layer] = type(layer).from_config(layer.get_config())
        return self._copies[layer]

    def _call(self, node, layer, tensors):
        """Call ``layer`` with ``node``'s original arguments, its tensors replaced."""
        tensor_dict: dict[str, list] = {}
        for old, new in zip(node.keras_inputs, tensors):
            tensor_dict.setdefault(str(id(old)), []).append(new)
        args, kwargs = node.map_arguments(tensor_dict)
        return self._call_layer(layer, *args, **kwargs)

    @staticmethod
    def _call_layer(layer, *args, **kwargs):
        try:
            return layer(*args, **kwargs)
        except Exception as err:  # a cut that Keras cannot wire up: say where
            raise SurgeryError(f"rebuilding layer '{layer.name}' ({type(layer).__name__}) "
                               f"after channel deletion failed: {err}") from err

    # ---- masks and weights -------------------------------------------------------------
    def _apply_delete_mask(self, node, inbound_masks):
        layer = node.outbound_layer
        if all(mask is None for mask in inbound_masks):
            return layer, None
        handler = registry.mask_handler(layer)
        if handler is None:
            return self._stock_apply_delete_mask(node, inbound_masks)
        shapes = node.input_shapes if len(inbound_masks) > 1 else [node.input_shapes]
        masks = [np.ones(tuple(shape)[1:], dtype=bool) if mask is None else mask
                 for mask, shape in zip(inbound_masks, shapes)]
        return handler(layer, masks[0] if len(masks) == 1 else masks)

    def _stock_apply_delete_mask(self, node, inbound_masks):
        layer = node.outbound_layer
        try:
            return super()._apply_delete_mask(node, inbound_masks)
        except ValueError as err:
            if "unsupported" not in str(err):
                raise SurgeryError(f"layer '{layer.name}' ({type(layer).__name__}): {err}"
                                   ) from err
            detail = ("it is a model nested inside the model; flatten it first with "
                      "surgery.flatten_model(model)" if isinstance(layer, keras.Model) else "")
            raise UnsupportedLayerError(layer, detail) from err

    def _delete_channel_weights(self, layer, channel_indices):
        handler = registry.output_handler(layer)
        if handler is not None:
            return handler(layer, list(channel_indices))
        if type(layer).__name__ in ("SimpleRNN", "GRU", "LSTM"):
            out = io.StringIO()  # stock prints one line per deletion; log it instead
            with contextlib.redirect_stdout(out):
                new = super()._delete_channel_weights(layer, channel_indices)
            _log.info(out.getvalue().strip())
            return new
        raise UnsupportedLayerError(
            layer, "no output handler deletes its own channels (register one with "
                   "outputs=True)")

    @staticmethod
    def _output_delete_mask(node, channels):
        shape = tuple(tf.nest.flatten(node.output_shapes)[0] if isinstance(
            node.output_shapes, list) else node.output_shapes)[1:]
        mask = np.ones(shape, dtype=bool)
        if getattr(node.outbound_layer, "data_format", "channels_last") == "channels_first":
            mask[channels, ...] = False
        else:
            mask[..., channels] = False
        return mask


def delete_channels(model: keras.Model, layer: Union[str, "keras.layers.Layer"],
                    channels: Iterable[int]) -> keras.Model:
    """Delete ``channels`` from ``layer`` (and the weights that read them downstream).

    Example::

        smaller = surgery.delete_channels(model, "conv1", [0, 5, 7])
    """
    surgeon = Surgeon(model)
    surgeon.add_job("delete_channels", layer, channels=channels)
    return surgeon.operate()
