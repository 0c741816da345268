"""How scores of different kinds of unit are put on one scale.

A criterion scores the units of each group (a layer's channels, heads, MLP units, blocks)
in its own units: weight norms or activations, larger in wide layers and deep blocks. The
planner divides each unit group's scores by the mean score of its layer's units of the
same kind, the same unit axis in every block (:func:`kind_mean`): for most layers that is
the group itself, but a keras-hub ViT or DeiT encoder holds all its blocks in one layer,
and its blocks' heads (or MLP units) then share one mean, so a head of the last block compares with a head of the first
(FLAP standardises per kind of module). A normalised score says how a unit compares with
the mean unit of its kind. Where a fill prices steps per FLOP or per second saved, a unit
also counts its size (:func:`unit_weight`, FLAP: a head counts its parameter cost):
otherwise a head, a quarter of a block's attention, would look as important as one of
its 256 MLP units and cost-priced budgets would take heads first.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from surgery.cost.params import unit_params
from surgery.errors import SurgeryError


def unit_name(axis: str) -> str:
    """A unit axis without its block: what one criterion measures alike in every block.

    >>> unit_name("transformer_block_2/heads"), unit_name("key_dim")
    ('heads', 'key_dim')
    """
    return axis.rpartition("/")[2]


def kind_mean(ranking, index: int) -> float:
    """The mean score of the unit groups of ``ranking.groups[index]``'s layer and unit
    axis, over all its blocks (0 where they all score 0). Key and value widths stay apart:
    the criterion measures them differently."""
    g = ranking.groups[index]
    key = (tuple(g.producers), unit_name(g.axis))
    pool = [ranking.score(h.name) for h in ranking.groups if h.axis is not None
            and (tuple(h.producers), unit_name(h.axis)) == key]
    return float(np.concatenate(pool).mean())


def _size(ranking, index: int) -> Optional[float]:
    """The parameters one unit of group ``index`` holds, or ``None`` where its rule cannot
    cut one alone (a block of depth)."""
    g = ranking.groups[index]
    info = next(n.info for n in ranking.graph.calls() if n.layer.name == g.producers[0])
    try:
        return unit_params(info, g.axis) or None
    except (NotImplementedError, KeyError, ValueError, TypeError, SurgeryError):
        return None  # e.g. a layer with one head: it cannot lose one alone


def unit_weight(ranking, index: int, cache: Optional[dict] = None) -> float:
    """Group ``index``'s units' size in parameters over the mean size of its layer's kinds
    of unit, where that layer has units of more than one size (a transformer block's heads
    and MLP units; a channel group, or a layer with one size of unit: 1).

    A ViT block of hidden width 64 with 4 heads of width 16 and 256 MLP units: a head
    holds 4,144 parameters (query, key, value and output), an MLP unit 129, so a head's
    normalised score counts 1.94 and an MLP unit's 0.06. ``cache`` keeps each layer's sizes
    (they do not depend on the scores).
    """
    g = ranking.groups[index]
    if g.axis is None:
        return 1.0
    layer = tuple(g.producers)
    cache = {} if cache is None else cache
    if layer not in cache:
        sizes: dict = {}
        for i, h in enumerate(ranking.groups):
            kind = unit_name(h.axis) if h.axis is not None else None
            if kind and tuple(h.producers) == layer and kind not in sizes:
                sizes[kind] = _size(ranking, i)
        cache[layer] = {k: v for k, v in sizes.items() if v}
    sizes = cache[layer]
    own = sizes.get(unit_name(g.axis))
    if own is None or len(set(sizes.values())) < 2:
        return 1.0
    return own / (sum(sizes.values()) / len(sizes))
