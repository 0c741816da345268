"""Channel groups: which output-channel axes of a model must lose the same channels.

This module owns the graph analysis. It walks the model once, in topological order,
describing every tensor's channel axis as a list of *segments*, each a slice of one
group's channels (``Concatenate`` joins segment lists at their offsets; a depthwise
``depth_multiplier`` multiplies a segment). A layer with ``filters``/``units`` starts a new
group; pass-through layers (BatchNormalization, activations, pooling, depthwise convs, …)
carry segments unchanged; element-wise merges (``Add``, ``Multiply`` gates, ``x + y``) unite
the groups they join, which is how identity shortcuts chain whole stages together. Groups
that cannot be cut exactly (normalised across channels, reaching a model output or an
unknown layer, a model input) are marked skipped with the reason, never guessed.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from surgery._backend import keras, tf
from surgery import registry
from surgery.handlers.merge import elementwise_merge
from surgery.handlers.tfop import is_elementwise

PASS_THROUGH = {
    "BatchNormalization", "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU", "PReLU",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Masking", "Flatten",
    "Cropping1D", "Cropping2D", "Cropping3D", "ZeroPadding1D", "ZeroPadding2D",
    "ZeroPadding3D", "UpSampling1D", "UpSampling2D", "UpSampling3D", "MaxPooling1D",
    "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
    "AveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "Rescaling", "Normalization", "Reshape",
}
CHANNEL_MIXING_NORMS = {"LayerNormalization", "GroupNormalization", "UnitNormalization"}


@dataclasses.dataclass
class ChannelGroup:
    """Output channels of ``producers`` that must be deleted together.

    ``producers`` are the layers with ``filters``/``units`` whose output channels are this
    group, in topological order; ``followers`` the layers the channels pass through that
    hold per-channel weights and read this group alone (BatchNormalization,
    DepthwiseConv2D, …); ``size`` the number
    of channels; ``blocks`` > 1 when a grouped convolution reads them, so channels must
    leave each of ``blocks`` equal slices equally; ``skipped`` why it cannot be cut, if so.
    """

    producers: list[str]
    size: int
    followers: list[str] = dataclasses.field(default_factory=list)
    blocks: int = 1
    skipped: Optional[str] = None

    @property
    def name(self) -> str:
        return self.producers[0] if self.producers else "<input>"


@dataclasses.dataclass(frozen=True)
class _Segment:
    gid: int
    multiplier: int = 1


class _Groups:
    """Union-find over group ids, with the facts collected per root."""

    def __init__(self):
        self.parent: list[int] = []
        self.info: list[ChannelGroup] = []
        self.order: list[int] = []

    def new(self, producers, size, skipped=None) -> int:
        self.parent.append(len(self.parent))
        self.info.append(ChannelGroup(list(producers), size, skipped=skipped))
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        a, b = min(a, b), max(a, b)
        self.parent[b] = a
        keep, gone = self.info[a], self.info[b]
        keep.producers += gone.producers
        keep.followers += gone.followers
        keep.blocks = max(keep.blocks, gone.blocks)
        keep.skipped = keep.skipped or gone.skipped
        if keep.size != gone.size:
            keep.skipped = keep.skipped or "merged channel axes of different sizes"

    def skip(self, segments, reason: str) -> None:
        for seg in segments or ():
            group = self.info[self.find(seg.gid)]
            group.skipped = group.skipped or reason

    def roots(self) -> list[ChannelGroup]:
        return [self.info[g] for g in range(len(self.parent)) if self.find(g) == g]


def _channels(tensor) -> int:
    return int(tensor.shape[-1]) if tensor.shape.rank else 1


def _is_producer(layer) -> bool:
    return registry.output_handler(layer) is not None or \
        type(layer).__name__ in ("SimpleRNN", "GRU", "LSTM")


def _describe(layer) -> str:
    return f"'{layer.name}' ({type(layer).__name__})"


def channel_groups(model: keras.Model) -> list[ChannelGroup]:
    """The coupled output-channel groups of a functional model.

    Example::

        for group in surgery.channel_groups(model):
            print(group.producers, group.size, group.skipped or "prunable")
    """
    from surgery.arguments import check_model
    from surgery.nesting import flattened
    from surgery.surgeon import require_functional

    check_model(model, "channel_groups")
    require_functional(model)
    model = flattened(model)
    groups = _Groups()
    segments: dict[int, Optional[list[_Segment]]] = {}
    depth = {n: d for d, nodes in model._nodes_by_depth.items() for n in nodes}
    for node in sorted(depth, key=depth.get, reverse=True):
        layer = node.outbound_layer
        if node.is_input:
            for t in node.outputs if isinstance(node.outputs, list) else [node.outputs]:
                segments[id(t)] = [_Segment(groups.new([], _channels(t), "model input"))]
            continue
        inbound = [segments.get(id(t)) for t in node.keras_inputs]
        out = _outbound_segments(layer, node, inbound, groups)
        for t in tf.nest.flatten(node.outputs):
            segments[id(t)] = out
    for t in model.outputs:
        groups.skip(segments.get(id(t)), "reaches a model output")
    return [g for g in groups.roots() if g.producers or g.skipped != "model input"]


def _outbound_segments(layer, node, inbound, groups: _Groups):
    name = type(layer).__name__
    first = inbound[0] if inbound else None
    if _is_producer(layer):
        n_blocks = getattr(layer, "groups", 1) or 1
        if n_blocks > 1:
            for seg in first or ():
                info = groups.info[groups.find(seg.gid)]
                info.blocks = max(info.blocks, n_blocks)
        gid = groups.new([layer.name], _channels(tf.nest.flatten(node.outputs)[0]))
        groups.info[gid].blocks = n_blocks
        return [_Segment(gid)]
    if name.startswith("DepthwiseConv"):
        if first and len(first) == 1 and first[0].multiplier == 1:  # reads one whole group
            groups.info[groups.find(first[0].gid)].followers.append(layer.name)
        return [_Segment(s.gid, s.multiplier * layer.depth_multiplier) for s in first or ()]
    if name in CHANNEL_MIXING_NORMS:
        groups.skip(first, f"normalised across channels by {_describe(layer)}")
        return first
    if name == "Concatenate":
        rank = len(node.input_shapes[0])
        if layer.axis % rank == rank - 1:
            return [seg for segs in inbound for seg in (segs or [])]
        return _unite(layer, inbound, groups)
    if registry.mask_handler(layer) is elementwise_merge or (
            name == "TFOpLambda" and is_elementwise(layer) and len(inbound) > 1):
        live = [segs for segs, t in zip(inbound, node.keras_inputs) if _channels(t) > 1]
        return _unite(layer, live, groups) if len(live) > 1 else (live[0] if live else first)
    if name == "Activation" and getattr(layer.activation, "__name__", "") in (
            "softmax", "log_softmax"):
        groups.skip(first, f"normalised across channels by {_describe(layer)}")
        return first
    if name == "Reshape" and node.input_shapes[-1] != node.output_shapes[-1]:
        groups.skip(first, f"channel axis reshaped by {_describe(layer)}")
        return [_Segment(groups.new([], node.output_shapes[-1], "reshaped channels"))]
    if name in PASS_THROUGH or name == "Activation" or (
            registry.mask_handler(layer) is not None and name not in ("TFOpLambda", "Softmax")):
        if name == "BatchNormalization":
            for seg in first or ():
                groups.info[groups.find(seg.gid)].followers.append(layer.name)
        return first
    reason = f"reaches {_describe(layer)}, which no handler supports"
    for segs in inbound:
        groups.skip(segs, reason)
    out = tf.nest.flatten(node.outputs)[0]
    return [_Segment(groups.new([], _channels(out), f"produced by {_describe(layer)}"))]


def _unite(layer, inbound, groups: _Groups):
    """Element-wise merge: the i-th segment of every input is one group."""
    structures = {tuple(s.multiplier for s in segs or ()) for segs in inbound}
    if len(structures) != 1 or any(segs is None for segs in inbound):
        for segs in inbound:
            groups.skip(segs, f"{_describe(layer)} merges differently laid-out channels")
        return inbound[0]
    for segs in inbound[1:]:
        for a, b in zip(inbound[0], segs):
            groups.union(a.gid, b.gid)
    return inbound[0]
