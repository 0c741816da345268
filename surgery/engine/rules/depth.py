"""Depth for blocks that are layers of their own: a language model's decoder blocks.

A pre-norm residual block computes ``x + f(norm(x))`` and ``+ g(norm(.))``: its input and
output are the residual stream. With the weights that end both branches zero (the
attention's output projection, the feed-forward down projection, and their biases) the
block is the identity, so removing it changes nothing; that is the zeroing oracle of
depth. A rule that mixes in :class:`BlockDepth` gives such a layer a unit axis
``"blocks"`` of size one: zeroing it zeroes those weights, cutting it rebuilds the layer
as ``surgery>SkippedBlock`` (:mod:`surgery.models.hub_blocks`), which passes the stream on
(and a ``generate`` cache back unchanged). :mod:`surgery.engine.groups` pools the axes of
all such blocks of a model into one group, so blocks are ranked against each other (by the
``activation`` criterion: how much each changes the residual stream) and the planner keeps
at least one. A keras-hub ViT or DeiT encoder holds all its blocks in one layer instead:
its rule (:mod:`surgery.engine.rules.composite`) has a ``"blocks"`` axis of its own.
"""
from __future__ import annotations

import numpy as np

from surgery.engine.rules.base import CHANNELWISE, CLASS_KEY, LayerRule
from surgery.engine.rules.registry import register_rule

#: the registered name of the layer a removed block is rebuilt as
SKIPPED = "surgery>SkippedBlock"
#: the unit axis of a block's depth
BLOCKS = "blocks"


def is_skipped(info) -> bool:
    """Whether ``info`` describes a block already cut to a ``SkippedBlock``."""
    return info.config.get(CLASS_KEY) == SKIPPED or info.class_name == "SkippedBlock"


class BlockDepth:
    """What a block rule mixes in (before :class:`LayerRule`) for depth: it names the
    weights that end its residual branches (:meth:`branch_ends`) and whether the block is
    the identity when they are zero (:meth:`has_depth`; a post-norm block is not). A rule
    that defines ``cut_units`` itself starts it with :func:`skipped_block`, and one that
    defines ``unit_axes`` adds :meth:`depth_axes`."""

    def branch_ends(self, info) -> list:  # pragma: no cover  (each block says)
        raise NotImplementedError

    def has_depth(self, info) -> bool:
        return True

    def depth_axes(self, info) -> dict:
        return {BLOCKS: 1} if self.has_depth(info) else {}

    def block_axes(self, info, block: int) -> list:
        return [a for a in self.unit_axes(info) if a != BLOCKS]

    def unit_slices(self, info, axis):
        if axis == BLOCKS:
            raise NotImplementedError("a block is zeroed by zero_units, not by slices")
        return super().unit_slices(info, axis)

    def unit_matrix(self, info, axis):
        if axis == BLOCKS:  # what the block's branches write to the residual stream
            return np.concatenate([np.ravel(info.weights[k]) for k in self.branch_ends(info)]
                                  )[None, :]
        return super().unit_matrix(info, axis)

    def zero_units(self, info, cuts):
        cuts = dict(cuts)
        gone = cuts.pop(BLOCKS, ())
        weights = super().zero_units(info, cuts)
        if len(gone):
            for k in self.branch_ends(info):
                weights[k] = np.zeros_like(weights[k])
        return weights

    def cut_units(self, info, cuts):
        if len(cuts.get(BLOCKS, ())):
            return skipped_block(info)
        return super().cut_units(info, {a: v for a, v in cuts.items() if a != BLOCKS})


def skipped_block(info) -> tuple:
    """``(config, weights)`` of the ``SkippedBlock`` that stands for the block ``info``."""
    config = {k: info.config[k] for k in ("name", "trainable", "dtype") if k in info.config}
    return dict(config, skipped=info.class_name, **{CLASS_KEY: SKIPPED}), []


def block_change(before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per example, how much a block changes the residual stream: the L2 norm over the
    hidden width of ``after - before``, averaged over the positions ``valid`` keeps;
    shaped ``(batch, 1)``, one unit of the ``"blocks"`` axis."""
    change = np.sqrt(np.square(np.asarray(after, np.float64) -
                               np.asarray(before, np.float64)).sum(axis=-1))
    weights = np.asarray(valid, np.float64)
    return ((change * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0))[:, None]


@register_rule("SkippedBlock")
class SkippedBlockRule(LayerRule):
    """``surgery>SkippedBlock``: the identity on the residual stream, without weights."""

    flow = CHANNELWISE
    identity_at_inference = True
