"""The patches for stock kerassurgeon 0.2.0 on tf-keras 2.21, one :class:`Patch` each.

Every patch names the upstream failure it fixes; ``tests/test_patches.py`` reproduces each
failure with the patch reverted and shows it gone with the patch applied. Branches that
already work in stock kerassurgeon are delegated to, never rewritten.
"""
from __future__ import annotations

import numpy as np

from surgery.patches.base import Patch


def _utils():
    from kerassurgeon import utils  # lazy: imported quietly by surgery.patches first

    return utils


def _surgeon_class():
    from kerassurgeon.surgeon import Surgeon  # lazy: imported quietly by surgery.patches

    return Surgeon


def _is_sequence(x) -> bool:
    # KerasTensors are not tf.Tensor instances and refuse len(); lists and tuples of
    # tensors or masks are the only containers kerassurgeon passes around.
    return isinstance(x, (list, tuple))


def single_element(x):
    """If x is a list or tuple with one element, return that element; else x unchanged.

    Fixes: stock ``utils.single_element`` tests ``isinstance(x, tf.Tensor)``, which is
    false for tf-keras KerasTensors, then calls ``len(x)``: "Keras symbolic inputs/outputs
    do not implement `__len__`" on the very first surgery.
    """
    if _is_sequence(x) and len(x) == 1:
        return x[0]
    return x


def get_one_tensor(x):
    """Return the single tensor in x (or x itself when it is a tensor).

    Fixes: stock ``utils.get_one_tensor`` has the same ``isinstance(x, tf.Tensor)``
    assumption as ``single_element`` and fails with the same ``__len__`` TypeError in
    ``Surgeon._insert_layer``.
    """
    if _is_sequence(x):
        assert len(x) == 1, "expected exactly one tensor"
        return x[0]
    return x


def _delete_layer(self, node, inputs, input_masks):
    """Skip ``node.outbound_layer`` by forwarding its input to its consumers.

    Fixes: stock ``Surgeon._delete_layer`` calls ``len(inputs)`` on a KerasTensor when
    ``inputs`` is not a ``tf.Tensor``, so ``delete_layer`` always fails on tf-keras.
    """
    utils = _utils()
    if _is_sequence(inputs) and len(inputs) >= 2:
        raise ValueError("Cannot delete a layer at a node with multiple inbound layers.")
    inputs = utils.single_element(inputs)
    input_masks = utils.single_element(input_masks)
    deleted_layer_output = utils.single_element(node.output_tensors)
    self._replace_tensors[deleted_layer_output] = (inputs, input_masks)


def _insert_layer(self, node, inputs, input_masks, new_layer=None):
    """Insert ``new_layer`` before ``node.outbound_layer``.

    Fixes: stock ``Surgeon._insert_layer`` has the ``len()``-on-KerasTensor failure of
    ``_delete_layer``, so ``insert_layer`` always fails on tf-keras.
    """
    utils = _utils()
    if _is_sequence(inputs) and len(inputs) >= 2:
        raise ValueError("Cannot insert a layer at a node with multiple inbound layers.")
    new_output = new_layer(utils.single_element(inputs))
    old_output = utils.get_one_tensor(node.input_tensors)
    input_masks = utils.single_element(input_masks)
    self._replace_tensors[old_output] = (new_output, input_masks)


def _filled_masks(node, inbound_masks):
    """Replace ``None`` masks with all-True masks of the matching input shape."""
    shapes = node.input_shapes
    if not isinstance(shapes, list):
        shapes = [shapes]
    return [np.ones(shape[1:], dtype=bool) if mask is None else mask
            for mask, shape in zip(inbound_masks, shapes)]


def relu_pass_through(original):
    """``ReLU`` passes the deletion mask through unchanged.

    Fixes: stock 0.2.0 raises '"ReLU" layers are currently unsupported' (fixed upstream
    after 0.2.0, never released), so MobileNet-style ReLU6 models cannot be cut.
    """
    def _apply_delete_mask(self, node, inbound_masks):
        if node.outbound_layer.__class__.__name__ == "ReLU" and \
                any(mask is not None for mask in inbound_masks):
            return node.outbound_layer, _filled_masks(node, inbound_masks)[0]
        return original(self, node, inbound_masks)
    return _apply_delete_mask


MERGE_LAYERS = ("Add", "Multiply", "Average", "Maximum")


def merge_masks_must_match(original):
    """Raise the intended ``ValueError`` when a merge layer's inputs lose different channels.

    Fixes: the stock ``Add``/``Multiply``/``Average``/``Maximum`` branch builds this
    ``ValueError`` but never raises it, so the surgery goes on and crashes later inside
    Keras with an opaque shape error (or, worse, silently keeps the second input's mask).
    """
    def _apply_delete_mask(self, node, inbound_masks):
        layer = node.outbound_layer
        if layer.__class__.__name__ in MERGE_LAYERS and \
                any(mask is not None for mask in inbound_masks):
            masks = _filled_masks(node, inbound_masks)
            if not _utils().all_equal(masks):
                raise ValueError(
                    f"{layer.__class__.__name__} layer '{layer.name}' must have the same "
                    "channels deleted on every input; its inputs lose different channels.")
        return original(self, node, inbound_masks)
    return _apply_delete_mask


def concatenate_axis_from_node(original):
    """Compute ``Concatenate``'s axis from the node being rebuilt, not ``layer.input_shape``.

    Fixes: the stock branch reads ``layer.input_shape``, which raises "The layer has
    multiple inbound nodes, with different input shapes" (or "…is not connected") once
    the layer has been used in a second model, e.g. after any earlier surgery.
    """
    def _apply_delete_mask(self, node, inbound_masks):
        layer = node.outbound_layer
        if layer.__class__.__name__ == "Concatenate" and \
                any(mask is not None for mask in inbound_masks):
            masks = _filled_masks(node, inbound_masks)
            axis = layer.axis % (masks[0].ndim + 1)
            # axis - 1: masks have no batch dimension.
            return layer, np.concatenate(masks, axis=axis - 1)
        return original(self, node, inbound_masks)
    return _apply_delete_mask


PATCHES = (
    Patch("utils.single_element", _utils, "single_element", single_element,
          doc=single_element.__doc__),
    Patch("utils.get_one_tensor", _utils, "get_one_tensor", get_one_tensor,
          doc=get_one_tensor.__doc__),
    Patch("Surgeon._delete_layer", _surgeon_class, "_delete_layer", _delete_layer,
          doc=_delete_layer.__doc__),
    Patch("Surgeon._insert_layer", _surgeon_class, "_insert_layer", _insert_layer,
          doc=_insert_layer.__doc__),
    Patch("Surgeon._apply_delete_mask:ReLU", _surgeon_class, "_apply_delete_mask",
          relu_pass_through, wraps_original=True, doc=relu_pass_through.__doc__),
    Patch("Surgeon._apply_delete_mask:merge", _surgeon_class, "_apply_delete_mask",
          merge_masks_must_match, wraps_original=True, doc=merge_masks_must_match.__doc__),
    Patch("Surgeon._apply_delete_mask:Concatenate", _surgeon_class, "_apply_delete_mask",
          concatenate_axis_from_node, wraps_original=True,
          doc=concatenate_axis_from_node.__doc__),
)
