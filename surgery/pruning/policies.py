"""Reconciliation policies: one decision for a group whose members propose different channels.

This module owns the rule that turns per-member channel scores into the one set of
channels every member of a :class:`~surgery.engine.groups.ChannelGroup` loses — the seed system's
"intersection or deeper layer" rule for residual ``Add``s and pw·dw·pw blocks, generalised.
A policy gets ``{member: scores}`` (higher = keep; producers in topological order, plus the
group's depthwise follower when it has one) and a *proposer* (the ``k`` lowest in ratio
mode, everything below a threshold in threshold mode) and returns the indices to drop.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional

import numpy as np

from surgery.errors import SurgeryError

Policy = Callable[..., np.ndarray]
POLICIES: dict[str, Policy] = {}


def register_policy(name: str):
    """Decorator: register ``fn(member_scores, propose, depthwise=None) -> indices``."""
    def decorator(fn: Policy) -> Policy:
        POLICIES[name] = fn
        return fn
    return decorator


def normalised(scores: np.ndarray) -> np.ndarray:
    """Scores divided by their mean, so members of different scale weigh the same."""
    scores = np.asarray(scores, dtype=np.float64)
    mean = scores.mean()
    return scores / mean if mean > 0 else np.zeros_like(scores)


class LowestK:
    """Ratio mode: a member proposes its ``k`` lowest channels (per block if blocked)."""

    def __init__(self, k: int, blocks: int = 1):
        self.k, self.blocks = k, blocks

    def combine(self, member_scores) -> np.ndarray:
        return sum(normalised(s) for s in member_scores.values()) / len(member_scores)

    def __call__(self, scores) -> np.ndarray:
        width = len(scores) // self.blocks
        per_block = self.k // self.blocks
        picks = [b * width + np.argsort(scores[b * width:(b + 1) * width], kind="stable")
                 [:per_block] for b in range(self.blocks)]
        return np.sort(np.concatenate(picks)).astype(int)


class BelowThreshold:
    """Threshold mode: a member proposes every channel whose raw score is below ``t``."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def combine(self, member_scores) -> np.ndarray:
        return sum(np.asarray(s, np.float64) for s in member_scores.values()) / len(member_scores)

    def __call__(self, scores) -> np.ndarray:
        return np.flatnonzero(np.asarray(scores) < self.threshold)


@register_policy("aggregate")
def aggregate(member_scores, propose, depthwise=None):
    """Combine the members' (normalised) importances into one score; drop the lowest."""
    return propose(propose.combine(member_scores))


@register_policy("intersection")
def intersection(member_scores, propose, depthwise=None):
    """Drop only the channels that every member proposes."""
    proposals = [set(propose(s).tolist()) for s in member_scores.values()]
    return np.array(sorted(set.intersection(*proposals)), dtype=int)


@register_policy("deepest")
def deepest(member_scores, propose, depthwise=None):
    """The deepest producer's proposal wins (the seed system's "deeper layer" rule)."""
    producers = [name for name in member_scores if name != depthwise]
    return propose(member_scores[producers[-1]])


@register_policy("depthwise")
def depthwise_wins(member_scores, propose, depthwise=None):
    """In pw·dw·pw the depthwise layer's proposal wins; groups without one aggregate."""
    if depthwise is None:
        return aggregate(member_scores, propose)
    return propose(member_scores[depthwise])


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        raise SurgeryError(f"unknown policy {name!r}; known policies: "
                           f"{', '.join(sorted(POLICIES))} (pass one as policy=)") from None
