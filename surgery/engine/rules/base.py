"""The layer-rule contract: what one layer family tells the rest of the plugin.

A :class:`LayerRule` describes a layer family in terms both Keras generations share: the
layer's class name, its config (a dict), its weights (numpy arrays, in ``get_weights()``
order) and its input/output shapes, all carried by a :class:`LayerInfo` that a graph
adapter fills in. The rule says how channels flow through the layer (:data:`FLOWS`), and
gives pure functions for cutting input and output channels, zeroing channels for the
equivalence oracle, FLOPs, the filter matrix criteria score, and what sparse training
penalises. Rules never touch a model or a graph.

Masks follow kerassurgeon's convention: boolean arrays shaped like one example of the
tensor (no batch axis), ``False`` = deleted channel.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Any, Callable, Optional, Sequence

import numpy as np

from surgery.errors import SurgeryError, UnsupportedLayerError

#: A layer that makes its own output channels (``filters`` / ``units``) and reads its
#: inputs through a weight matrix, so deletions upstream end at it.
PRODUCER = "producer"
#: Output channel ``c`` depends on input channel ``c`` only (``multiplier`` outputs each).
CHANNELWISE = "channelwise"
#: Element-wise merge of several tensors: their channels are coupled.
MERGE = "merge"
#: Concatenation: the inputs' channels are stacked.
CONCAT = "concat"
#: Values are moved to a new shape; channels follow the data (Reshape, Flatten).
RESHAPE = "reshape"
#: Reads its input through weights but makes no prunable channels of its own.
MIXING = "mixing"
#: Mixes channels without weights (softmax, LayerNormalization): deletions cannot cross.
BLOCKING = "blocking"
FLOWS = (PRODUCER, CHANNELWISE, MERGE, CONCAT, RESHAPE, MIXING, BLOCKING)


@dataclasses.dataclass
class LayerInfo:
    """One call of a layer (or non-layer operation), as a graph adapter describes it.

    ``input_shapes`` / ``output_shape`` exclude the batch axis; ``op`` names the function
    of an operation layer (``"math.add"`` for tf-keras's ``TFOpLambda``); ``layer`` is the
    live layer object, for rules registered through the old handler API only;
    ``input_roles`` the call parameter each tensor input was passed as (``"query"``,
    ``"value"``, …; ``""`` where unknown); ``keras`` the Keras generation (2 or 3).
    """

    class_name: str
    name: str
    config: dict
    input_shapes: list
    output_shape: tuple
    op: Optional[str] = None
    layer: Any = None
    load_weights: Optional[Callable[[], list]] = None
    _weights: Optional[list] = None
    input_roles: list = dataclasses.field(default_factory=list)
    keras: int = 2

    @property
    def weights(self) -> list:
        if self._weights is None:
            self._weights = [np.asarray(w) for w in self.load_weights()] \
                if self.load_weights else []
        return self._weights

    @property
    def input_shape(self) -> tuple:
        return tuple(self.input_shapes[0]) if self.input_shapes else ()

    def replaced(self, config: dict, weights: Optional[list]) -> "LayerInfo":
        """The same call with a new config and weights (to compose input and output cuts)."""
        return dataclasses.replace(self, config=config, _weights=weights,
                                   load_weights=None if weights is not None else
                                   self.load_weights)

    def describe(self) -> str:
        return f"'{self.name}' ({self.class_name})"


#: a config key a rule may set in a new config: the registered name
#: (``keras.saving.get_registered_object``) of the class to rebuild the layer as, when
#: its own class cannot express the cut (keras-hub blocks: surgery.models.hub_blocks)
CLASS_KEY = "__surgery_class__"

_APPROXIMATE = contextvars.ContextVar("surgery_approximate", default=False)


@contextlib.contextmanager
def approximate(enabled: bool = True):
    """Within it, layers whose rule is only approximately right under channel deletion
    (:meth:`LayerRule.inexact`: mean-centred LayerNormalization) let deletions cross them;
    outside it (the default) they block. ``surgery.plan(..., exact=False)`` enters it, and
    ``apply`` / ``verify`` of such a plan too.

    >>> from surgery.engine.rules import rule_for
    >>> info = LayerInfo("LayerNormalization", "ln", {"axis": [-1]}, [(4,)], (4,))
    >>> rule_for(info).flow_of(info), approximating()
    ('blocking', False)
    >>> with approximate():
    ...     rule_for(info).flow_of(info)
    'channelwise'
    """
    token = _APPROXIMATE.set(bool(enabled))
    try:
        yield
    finally:
        _APPROXIMATE.reset(token)


def approximating() -> bool:
    """True inside :func:`approximate`."""
    return _APPROXIMATE.get()


# ---- helpers shared by rules ----------------------------------------------------------

def channel_vector(mask: np.ndarray, axis: int = -1) -> np.ndarray:
    """The per-channel keep vector of a full-shaped mask (channels on ``axis``)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim == 0:
        return mask.reshape(1)
    moved = np.moveaxis(mask, axis, -1).reshape(-1, mask.shape[axis])
    return moved[0]


def concrete(shape: Sequence) -> tuple:
    """A mask shape for a tensor shape: unknown sizes (``None``) become 1, along which
    masks broadcast."""
    return tuple(1 if s is None else int(s) for s in shape)


def mask_for_shape(keep: np.ndarray, shape: Sequence[int], axis: int = -1) -> np.ndarray:
    """A full-shaped mask (``shape`` without batch) whose channel axis is ``keep``."""
    shape = concrete(shape)
    view = [1] * len(shape)
    view[axis] = len(keep)
    return np.broadcast_to(np.asarray(keep, bool).reshape(view), shape).copy()


def zeroed(weights: list, channels, kernel: int = 0, axis: int = -1) -> list:
    """Copies of ``weights`` with output ``channels`` zeroed in the kernel at index
    ``kernel`` (along ``axis``) and in the bias that follows it, if any."""
    weights = [w.copy() for w in weights]
    np.moveaxis(weights[kernel], axis, -1)[..., channels] = 0
    if len(weights) > kernel + 1:
        weights[kernel + 1][channels] = 0
    return weights


def with_config(config: dict, **changes) -> dict:
    new = dict(config)
    new.update(changes)
    return new


def merged_mask(info: LayerInfo, masks: Sequence[np.ndarray], strict: bool = True
                ) -> np.ndarray:
    """The outbound mask of an element-wise merge of ``masks`` (broadcast together).

    Every input must lose the same channels; one-channel inputs broadcast (a scalar gate).
    With ``strict=False`` (zeroing) the channels any input loses are lost.
    """
    masks = [np.asarray(m, dtype=bool) for m in masks]
    keeps = [channel_vector(m) for m in masks if m.ndim and m.shape[-1] != 1]
    if strict and any(not np.array_equal(keeps[0], k) for k in keeps[1:]):
        lost = [np.flatnonzero(~k).tolist() for k in keeps]
        raise SurgeryError(
            f"layer {info.describe()} merges inputs that lose different channels ({lost}); "
            "coupled layers must lose the same channels — use surgery.plan, which groups "
            "them, or delete the same channels from each input.")
    shape = np.broadcast_shapes(*[m.shape for m in masks])
    return np.logical_and.reduce([np.broadcast_to(m, shape) for m in masks])


class LayerRule:
    """How one layer family handles channels. Subclass it and register it with
    :func:`surgery.register_rule`; override what differs from a weightless channel-wise
    layer (the default).

    Example — a layer that scales each channel by a learned vector::

        @surgery.register_rule("ChannelScale")
        class ChannelScaleRule(surgery.LayerRule):
            flow = "channelwise"

            def cut_inputs(self, info, masks):
                keep = channel_vector(masks[0])
                return info.config, [info.weights[0][keep]]

            def zero_inputs(self, info, keep):
                return None            # zeros stay zeros after a scale
    """

    #: one of :data:`FLOWS`; :meth:`flow_of` may refine it from the config
    flow: str = CHANNELWISE
    #: the layer is the identity at inference (Dropout, GaussianNoise, …)
    identity_at_inference: bool = False
    #: index of the weight sparse training prunes (``None``: nothing)
    kernel_index: Optional[int] = None
    #: what :mod:`surgery.pipeline.regularizers` penalises: ``"kernel"``, ``"depthwise"``,
    #: ``"gamma"`` or ``None``
    penalty: Optional[str] = None

    # ---- how channels flow -------------------------------------------------------------
    def flow_of(self, info: LayerInfo) -> str:
        return self.flow

    def blocked(self, info: LayerInfo) -> str:
        """Why deleted channels cannot cross this layer (for ``BLOCKING`` flows)."""
        return f"normalised across channels by {info.describe()}"

    def channel_axis(self, info: LayerInfo) -> int:
        """The channel axis of its output, counted without the batch axis."""
        return 0 if info.config.get("data_format") == "channels_first" else -1

    def inexact(self, info: LayerInfo) -> bool:
        """True when deleting input channels across it is only approximate (it lets
        deletions cross only inside :func:`approximate`)."""
        return False

    def multiplier(self, info: LayerInfo) -> int:
        """Output channels per input channel (DepthwiseConv2D's ``depth_multiplier``)."""
        return 1

    def has_channel_weights(self, info: LayerInfo) -> bool:
        """True when it keeps weights per input channel (BatchNormalization, PReLU)."""
        return False

    def concat_axis(self, info: LayerInfo) -> int:
        """For ``CONCAT``: the axis joined, counted without the batch axis."""
        return -1

    # ---- producers ---------------------------------------------------------------------
    def channels(self, info: LayerInfo) -> int:
        """How many output channels it owns (``filters`` / ``units``)."""
        for key in ("filters", "units"):
            if key in info.config:
                return int(info.config[key])
        return int(info.output_shape[-1])

    def blocks(self, info: LayerInfo) -> int:
        """Grouped convolutions: channels must leave each of this many slices equally."""
        return 1

    def cut_outputs(self, info: LayerInfo, channels: Sequence[int]) -> tuple:
        """``(config, weights)`` without output ``channels`` (sorted indices)."""
        raise NotImplementedError(f"{type(self).__name__} has no output channels to cut")

    def zero_outputs(self, info: LayerInfo, channels: Sequence[int]) -> list:
        """Weights with which output ``channels`` are exactly zero for every input."""
        raise NotImplementedError(f"{type(self).__name__} cannot zero output channels")

    def filter_matrix(self, info: LayerInfo) -> np.ndarray:
        """The weights that make each output channel, as ``(channels, fan)``."""
        raise NotImplementedError(f"{type(self).__name__} has no filter matrix")

    # ---- consumers and channel-wise layers ---------------------------------------------
    def cut_inputs(self, info: LayerInfo, masks: list) -> Optional[tuple]:
        """``(config, weights)`` for inputs shaped by ``masks`` (one per tensor input);
        ``None`` when the layer holds nothing that depends on its input channels."""
        return None

    def zero_inputs(self, info: LayerInfo, keep: np.ndarray) -> Optional[list]:
        """Weights with which zero input channels (``~keep``) give zero outputs, or
        ``None`` when they already do (BatchNormalization's ``beta`` would not)."""
        return None

    def propagate(self, info: LayerInfo, masks: list, strict: bool = True
                  ) -> Optional[np.ndarray]:
        """The outbound mask for inbound ``masks``; ``None`` when the layer consumes the
        deletion (producers, mixing layers)."""
        flow = self.flow_of(info)
        if flow in (PRODUCER, MIXING):
            return None
        if flow == MERGE:
            live = [m for m, s in zip(masks, info.input_shapes) if len(s)]
            return merged_mask(info, live, strict)
        if flow == CONCAT:
            axis = self.concat_axis(info) % len(info.output_shape)
            return np.concatenate(masks, axis=axis)
        if flow == RESHAPE:
            return reshaped_mask(info, masks[0])
        if flow == BLOCKING:
            raise UnsupportedLayerError(info, self.blocked(info))
        axis = self.channel_axis(info)
        keep = np.repeat(channel_vector(masks[0], axis), self.multiplier(info))
        return mask_for_shape(keep, info.output_shape, axis)

    def reads_inputs(self, info: LayerInfo) -> bool:
        """Whether a :data:`MIXING` call's :meth:`cut_inputs` takes deleted input channels
        (a language model's output projection); by default mixing calls stop them."""
        return False

    def input_blocked(self, info: LayerInfo, index: int) -> Optional[str]:
        """Why deleted channels cannot reach tensor input ``index`` (an attention mask),
        or ``None`` when :meth:`cut_inputs` handles them."""
        return None

    # ---- units no tensor carries (attention heads, a head's width) ---------------------
    # A layer may own prunable axes inside itself: MultiHeadAttention's heads and the
    # per-head query/key width (``key_dim``) and value width (``value_dim``). Each such
    # *unit axis* is a channel group of its own (labelled ``"layer:axis"``), scored,
    # planned and cut like output channels; ``PrunePlan.units`` holds the decisions as
    # ``{layer: {axis: [indices]}}``. A rule with unit axes overrides :meth:`unit_axes`,
    # :meth:`unit_slices` and :meth:`cut_units`; zeroing, magnitude and Taylor scores
    # follow from :meth:`unit_slices`.
    def unit_axes(self, info: LayerInfo) -> dict:
        """The layer's own prunable axes that no tensor carries, ``{axis name: size}``
        (``{"heads": 8, "key_dim": 64, "value_dim": 64}``); empty for most layers."""
        return {}

    def unit_activations(self, info: LayerInfo, inputs: list) -> dict:
        """``{axis: (batch, units)}``: what each unit of the layer's unit axes outputs on
        the call's ``inputs`` (NumPy arrays), as a magnitude per example, for the
        ``activation`` criterion; ``{}`` where the rule cannot tell (scored by weights)."""
        return {}

    def unit_means(self, info: LayerInfo, inputs: list) -> dict:
        """``{axis: (batch, units)}``: each unit's signed mean output over the positions,
        per example, where :meth:`fold_units` can fold it (bias compensation)."""
        return {}

    def fold_units(self, info: LayerInfo, axis: str, units, means) -> Optional[list]:
        """Weights in which units ``units`` of ``axis``, were they to output the constants
        ``means``, are already accounted for in a bias (their reader's), so deleting them
        changes nothing more; ``None`` where no bias reads them linearly."""
        return None

    def fold_inputs(self, info: LayerInfo, channels, means) -> Optional[list]:
        """Weights in which input channels ``channels``, were they the constants
        ``means``, are folded into the bias (a layer linear in its last-axis input);
        ``None`` where the layer cannot."""
        return None

    def interacting_axes(self, info: LayerInfo) -> list:
        """Pairs of unit axes whose costs multiply (a head's width with the head count):
        cost models add a term for each pair that both lose units."""
        return []

    def emptiable_axes(self, info: LayerInfo) -> list:
        """The unit axes whose units may all go (the layer computes exactly the same
        without them, rebuilt by its rule): budgets may empty them, where every other
        axis keeps at least one unit."""
        return []

    def block_axes(self, info: LayerInfo, block: int) -> list:
        """The unit axes inside block ``block`` of the layer's ``"blocks"`` axis (they go
        with it: a removed block's heads are no longer there to cut)."""
        return []

    def unit_blocks(self, info: LayerInfo, axis: str) -> int:
        """Units must leave each of this many equal slices of ``axis`` equally (query
        heads per key/value group in grouped-query attention)."""
        return 1

    def unit_slices(self, info: LayerInfo, axis: str) -> list:
        """``[(weight index, weight axis), ...]``: the weights whose entries along that
        axis, at unit ``u``, are zeroed to make unit ``u`` contribute exactly nothing
        (MultiHeadAttention's heads: the value kernel and bias). Taylor scores a unit by
        the first-order loss change of zeroing exactly these entries."""
        raise NotImplementedError(f"{type(self).__name__} has no unit axis {axis!r}")

    def cut_units(self, info: LayerInfo, cuts: dict) -> tuple:
        """``(config, weights)`` without the units ``cuts`` (``{axis: sorted indices}``),
        deleted from every weight that holds them, and whatever keeps the layer exact
        (a key-width cut folds the change of the attention scale into the query)."""
        raise NotImplementedError(f"{type(self).__name__} has no units to cut")

    def zero_units(self, info: LayerInfo, cuts: dict) -> list:
        """Weights with which the units ``cuts`` contribute exactly nothing."""
        weights = [w.copy() for w in info.weights]
        for axis, units in cuts.items():
            for index, weight_axis in self.unit_slices(info, axis):
                np.moveaxis(weights[index], weight_axis, 0)[list(units)] = 0
        return weights

    def unit_matrix(self, info: LayerInfo, axis: str) -> np.ndarray:
        """The weights of each unit as ``(units, fan)``, for magnitude criteria."""
        return np.concatenate(
            [np.moveaxis(info.weights[i], a, 0).reshape(info.weights[i].shape[a], -1)
             for i, a in self.unit_slices(info, axis)], axis=1)

    # ---- costs and criteria ------------------------------------------------------------
    def flops(self, info: LayerInfo) -> int:
        """FLOPs of one call at batch 1 (2 × multiply-accumulates; 0 for cheap layers)."""
        return 0

    def activation(self, info: LayerInfo) -> str:
        """The element-wise activation the layer applies last (``""`` for none)."""
        act = info.config.get("activation", "")
        return act if isinstance(act, str) else ""

    def identity(self, info: LayerInfo) -> bool:
        """True when the layer passes values on unchanged at inference, up to a fixed
        per-channel affine map (dropout, BatchNormalization, a linear activation)."""
        return self.identity_at_inference

    def relu_like(self, info: LayerInfo) -> bool:
        """True when its output is exactly zero wherever its input is not positive."""
        return False

    def channel_scale(self, info: LayerInfo) -> Optional[np.ndarray]:
        """The learned per-channel scale (BatchNormalization's gamma), if any."""
        return None

    def linear_window(self, info: LayerInfo) -> Optional[dict]:
        """For ThiNet: the layer as a sliding linear window over its input —
        ``kernel`` ``(kh, kw, in, out)``, ``strides``, ``dilation``, ``padding`` — or
        ``None`` when it is not one."""
        return None


def reshaped_mask(info: LayerInfo, mask: np.ndarray) -> np.ndarray:
    """Reshape a mask like the data; the kept entries along the new last axis must form
    whole channels."""
    full = np.broadcast_to(mask, concrete(info.input_shape))
    return np.reshape(full, concrete(info.output_shape))


def rows_consistent(full: np.ndarray) -> bool:
    """True when every position of a mask keeps the same channels."""
    flat = full.reshape(-1, full.shape[-1]) if full.ndim else full.reshape(1, 1)
    return bool(np.all(flat == flat[:1]))


class ChannelWeightsRule(LayerRule):
    """A channel-wise layer holding weights whose last axis is the channel axis
    (BatchNormalization, PReLU, LayerScale): a deleted channel deletes its entries, and
    a zero channel stays zero unless :meth:`zero_inputs` says otherwise."""

    flow = CHANNELWISE

    def has_channel_weights(self, info: LayerInfo) -> bool:
        return True

    def cut_inputs(self, info: LayerInfo, masks: list) -> Optional[tuple]:
        keep = channel_vector(masks[0])
        if keep.all():
            return None
        return info.config, [w[..., keep] for w in info.weights]
