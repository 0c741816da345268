"""Plain convolutions and Dense: deleting their own output channels (filters / units),
and grouped ``Conv2D`` (``groups`` > 1) as a consumer, which stock kerassurgeon cuts wrong.

Ungrouped Conv/Dense *consumers* stay with stock kerassurgeon, whose branches for them
work once the patches are applied.
"""
from __future__ import annotations

import numpy as np

from surgery.errors import SurgeryError
from surgery.registry import channel_vector, rebuilt, register_handler


@register_handler(("Conv1D", "Conv2D", "Conv3D", "Dense"), outputs=True)
def delete_last_axis_outputs(layer, channels):
    """Kernel ``(..., in, out)`` and bias ``(out,)``: drop the deleted ``out`` slices."""
    attr = "units" if "units" in layer.get_config() else "filters"
    total = layer.get_config()[attr]
    groups = getattr(layer, "groups", 1) or 1
    if groups > 1:
        per_group = total // groups
        counts = np.bincount(np.asarray(channels) // per_group, minlength=groups)
        if len(set(counts.tolist())) != 1:
            raise SurgeryError(
                f"layer '{layer.name}' ({type(layer).__name__}) has groups={groups}: every "
                f"group must lose the same number of filters, got {counts.tolist()} "
                f"(use surgery.plan, which deletes group-wise).")
    weights = [np.delete(w, channels, axis=-1) for w in layer.get_weights()]
    return rebuilt(layer, weights, **{attr: total - len(channels)})


@register_handler(("Conv1D", "Conv2D", "Conv3D"))
def conv_inputs(layer, mask):
    """Delete the kernel's input-channel slices for the deleted inbound channels.

    Grouped convolutions hold ``in / groups`` input rows per group; the deleted channels
    must leave every group equally so the result is still a valid grouped conv.
    """
    keep = channel_vector(mask)
    if keep.all():
        return layer, None
    groups = getattr(layer, "groups", 1) or 1
    kernel, *rest = layer.get_weights()
    if groups == 1:
        return rebuilt(layer, [kernel[..., keep, :], *rest]), None
    in_per_group = kernel.shape[-2]
    out_per_group = kernel.shape[-1] // groups
    kept = keep.reshape(groups, in_per_group)
    if len(set(kept.sum(axis=1).tolist())) != 1:
        raise SurgeryError(
            f"layer '{layer.name}' ({type(layer).__name__}) has groups={groups}: its input "
            "channels must leave every group equally (use surgery.plan, which deletes "
            "group-wise).")
    slices = [kernel[..., kept[g], g * out_per_group:(g + 1) * out_per_group]
              for g in range(groups)]
    return rebuilt(layer, [np.concatenate(slices, axis=-1), *rest]), None


@register_handler("Dense")
def dense_inputs(layer, mask):
    """Dense reads the last axis: a flat mask (after Flatten) or the channel axis of a
    feature map (Dense applied per position, as in ConvNeXt)."""
    keep = channel_vector(mask)
    if keep.all():
        return layer, None
    kernel, *rest = layer.get_weights()
    return rebuilt(layer, [kernel[keep, :], *rest]), None
