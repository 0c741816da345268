"""Prune plans: which channels every layer loses, decided group by group.

This module owns :func:`plan` and :class:`PrunePlan`. It asks :mod:`surgery.engine.groups` for the
channel groups, :mod:`surgery.pruning.criteria` for per-layer channel scores, and
:mod:`surgery.pruning.policies` for how members of a group agree, and applies the user's budget
(``ratio`` or ``threshold``, ``per_layer`` ratios, ``ignore``, ``round_to``,
``min_channels``, ``local`` or ``global`` scope). The plan is plain data: it serialises to
JSON and is carried out by :func:`surgery.apply`.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Mapping, Optional, Sequence

import numpy as np

from surgery.engine.graph import resolve
from surgery.engine.flatten import flattened
from surgery.engine.groups import ChannelGroup, analyse
from surgery.engine.rules import LayerRule, rule_for
from surgery.engine.rules.base import approximate, approximating
from surgery.pruning.criteria import channel_scores
from surgery.pruning.criteria.units import unit_axis_wanted, unit_scores
from surgery.pruning.policies import BelowThreshold, LowestK, get_policy
from surgery.pruning.arguments import check_plan_arguments, check_unit_arguments
from surgery.pruning.budget import plan_for_flops


@dataclasses.dataclass
class PrunePlan:
    """What a surgery will delete.

    ``deletions``: layer name -> sorted channel indices, for every layer with ``filters``
    or ``units`` that loses channels; ``groups``: the producer names of each group (all
    members of a group have the same entry in ``deletions``); ``units``: layer name ->
    unit axis -> sorted indices, the heads and head widths a layer loses
    (``{"mha": {"heads": [1, 3], "key_dim": []}}``; one entry per planned unit axis, see
    ``LayerRule.unit_axes``); ``skipped``: group or layer -> why it was left alone;
    ``sizes``: group name (``"mha:heads"`` for a unit axis) -> channels before;
    ``settings``: the arguments the plan was made with.
    """

    deletions: dict[str, list[int]]
    groups: list[list[str]]
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    sizes: dict[str, int] = dataclasses.field(default_factory=dict)
    settings: dict = dataclasses.field(default_factory=dict)
    labels: list[str] = dataclasses.field(default_factory=list)
    removed: dict[str, int] = dataclasses.field(default_factory=dict)
    units: dict[str, dict[str, list[int]]] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PrunePlan":
        data = json.loads(text)
        data["deletions"] = {k: [int(i) for i in v] for k, v in data["deletions"].items()}
        data["units"] = {k: {a: [int(i) for i in v] for a, v in axes.items()}
                         for k, axes in data.get("units", {}).items()}
        return cls(**data)

    @property
    def channels_removed(self) -> int:
        if self.removed:
            return sum(self.removed.values())
        return sum(len(self.deletions.get(g[0], ())) for g in self.groups)

    def summary(self) -> str:
        """A table of channels before -> after per group."""
        rows = [("group", "layers", "before", "after", "note")]
        labels = self.labels or [members[0] for members in self.groups]
        for name, members in zip(labels, self.groups):
            size = self.sizes.get(name, 0)
            lost = self.removed.get(name, len(self.deletions.get(members[0], ())))
            rows.append((name, str(len(members)), str(size), str(size - lost), ""))
        for layer, axes in self.units.items():
            for axis, lost in axes.items():
                size = self.sizes.get(f"{layer}:{axis}", 0)
                rows.append((f"{layer}:{axis}", "1", str(size), str(size - len(lost)), ""))
        for name, reason in self.skipped.items():
            size = self.sizes.get(name, 0)
            rows.append((name, "", str(size), str(size), "skipped: " + reason))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _keep_count(size: int, ratio: float, round_to: int, min_channels: int, blocks: int) -> int:
    keep = size - math.floor(size * ratio + 1e-9)
    keep = math.ceil(keep / round_to) * round_to
    keep = max(keep, min_channels, blocks)
    keep = math.ceil(keep / blocks) * blocks
    return min(size, keep)


def _member_scores(group: ChannelGroup, scores, policy: str) -> dict[str, np.ndarray]:
    """One score per group channel for each member (a producer split between groups
    contributes the channels it has in this group)."""
    members = {p: np.array([np.mean(np.asarray(scores[p], np.float64)[rows])
                            for rows in group.channels[p]]) for p in group.producers}
    if policy == "depthwise" and group.followers:
        dw = [f for f in group.followers if f in scores and
              np.size(scores[f]) % group.size == 0]
        if dw:
            raw = np.asarray(scores[dw[0]], np.float64)
            members[dw[0]] = raw.reshape(group.size, -1).sum(axis=1)
    return members


def _scored_followers(model, groups) -> list[str]:
    """The first follower of each group that criteria can score (a depthwise conv)."""
    infos = {n.layer.name: n.info for n in resolve(model).calls()}
    names = []
    for g in groups:
        for f in g.followers:
            rule = rule_for(infos[f])
            if type(rule).filter_matrix is not LayerRule.filter_matrix:
                names.append(f)
                break
    return names


def _labels(groups) -> list[str]:
    """A unique name per group: its first producer, with the channels it holds when that
    producer is split between groups."""
    counts: dict[str, int] = {}
    for g in groups:
        counts[g.name] = counts.get(g.name, 0) + 1
    labels = []
    for g in groups:
        if counts[g.name] > 1:
            rows = g.channels[g.name]
            labels.append(f"{g.name}[{rows[0][0]}:{rows[-1][-1] + 1}]")
        else:
            labels.append(g.name)
    return labels


def _trim(chosen, combined: np.ndarray, size: int, round_to: int, min_channels: int,
          blocks: int) -> np.ndarray:
    """Threshold mode: give back the best-scored channels until the budget rules hold."""
    order = sorted((int(c) for c in chosen), key=lambda c: combined[c])  # worst first
    n_delete = size - _keep_count(size, len(order) / size, round_to, min_channels, blocks)
    if blocks == 1:
        return np.sort(np.array(order[:n_delete], int))
    width = size // blocks
    by_block = [[c for c in order if c // width == b] for b in range(blocks)]
    per_block = min(n_delete // blocks, min(len(b) for b in by_block))
    return np.sort(np.array([c for b in by_block for c in b[:per_block]], int))


def plan(model, ratio: Optional[float] = 0.3, criterion="l1",
         policy: str = "aggregate", *, threshold: Optional[float] = None,
         per_layer: Optional[Mapping[str, float]] = None, ignore: Sequence[str] = (),
         round_to: Optional[int] = None, min_channels: int = 1, scope: str = "local",
         data=None, flops_target: Optional[float] = None,
         latency_target: Optional[float] = None, runtime: str = "onnxruntime",
         batch_size: int = 1, threads: Optional[int] = None, heads: bool = True,
         head_dims: bool = False, exact: bool = True, candidates: int = 1) -> PrunePlan:
    """Decide which channels to delete, group by group.

    ``ratio``: fraction of each group's channels to delete (or of all channels with
    ``scope="global"``, ranked across groups by normalised importance); ``threshold``:
    instead, delete channels whose score is below it; ``per_layer``: ratios for the groups
    containing the named layers; ``ignore``: layers whose groups are left alone;
    ``round_to``: kept widths are multiples of it; ``min_channels``: never keep fewer.
    With ``threshold`` given, ``ratio`` is ignored. ``flops_target``: instead, remove
    that fraction of ``count_flops(model)`` (see :mod:`surgery.pruning.budget`).
    ``latency_target``: instead, remove that fraction of the latency measured in
    ``runtime`` (``"onnxruntime"``, ``"tflite"`` or ``"tensorflow"``) at ``batch_size``
    with ``threads`` (default all cores); ``round_to`` then defaults to the CPU's SIMD
    block, and the plan is checked by timing (see :mod:`surgery.cost.budget`). Output
    channels that reach a model output (the classifier) are never pruned. ``exact=False``
    also lets deletions cross layers where they are only approximate (mean-centred
    ``LayerNormalization``: the residual width of a post- or pre-norm transformer); the
    plan lists them in ``settings["approximate"]`` and, given ``data``, how far they moved
    the outputs (``settings["deviation"]``: max relative difference on up to 64 examples
    between the pruned model and the original with the deleted channels zeroed).

    Attention layers (``MultiHeadAttention``) also lose units that no tensor carries, each
    axis a group of its own (``"mha:heads"``) cut at the same ratio: ``heads=True`` prunes
    whole heads, ``head_dims=True`` the per-head query/key width (``key_dim``) and value
    width (``value_dim``); both may be on. ``plan.units`` holds those decisions. With
    ``flops_target`` or ``latency_target`` only channels are searched (heads and head
    widths stay).

    ``candidates`` N > 1 (with ``flops_target`` or ``latency_target``, and ``data``):
    search N allocations of the budget between groups and keep the one whose cut agrees
    best with the original on ``data`` after adaptive BN (EagleEye; see
    :mod:`surgery.pruning.selection`). Candidate 0 is the plan ``candidates=1`` gives.

    Example::

        p = surgery.plan(model, ratio=0.5, criterion="l1", policy="intersection")
        print(p.summary())
        smaller = surgery.apply(model, p)
    """
    if not isinstance(exact, bool):
        from surgery.errors import SurgeryError
        raise SurgeryError(f"plan(exact=...) must be True or False, got {exact!r}")
    if not exact and not approximating():
        with approximate():
            result = plan(model, ratio, criterion, policy, threshold=threshold,
                          per_layer=per_layer, ignore=ignore, round_to=round_to,
                          min_channels=min_channels, scope=scope, data=data,
                          flops_target=flops_target, latency_target=latency_target,
                          runtime=runtime, batch_size=batch_size, threads=threads,
                          heads=heads, head_dims=head_dims, exact=False,
                          candidates=candidates)
        return _with_deviation(model, result, data)
    exact = not approximating()
    check_unit_arguments(heads=heads, head_dims=head_dims)
    # --- argument checks and the budgets: surgery.pruning.arguments, .budget, surgery.cost ---
    if latency_target is not None:
        from surgery.cost.budget import check_latency_arguments, plan_for_latency

        check_plan_arguments(model, ratio=ratio, criterion=criterion, policy=policy, threshold=threshold, per_layer=per_layer, ignore=ignore, round_to=round_to or 1, min_channels=min_channels, scope=scope, data=data, flops_target=flops_target, latency_target=latency_target, candidates=candidates)  # noqa: E501
        check_latency_arguments(latency_target, runtime, batch_size, threads)
        return plan_for_latency(model, latency_target, runtime=runtime, batch_size=batch_size, threads=threads, round_to=round_to, plan_fn=plan, criterion=criterion, policy=policy, per_layer=per_layer, ignore=ignore, min_channels=min_channels, scope=scope, data=data, heads=False, head_dims=False, candidates=candidates)  # noqa: E501
    round_to = 1 if round_to is None else round_to
    check_plan_arguments(model, ratio=ratio, criterion=criterion, policy=policy, threshold=threshold, per_layer=per_layer, ignore=ignore, round_to=round_to, min_channels=min_channels, scope=scope, data=data, flops_target=flops_target, candidates=candidates)  # noqa: E501
    if flops_target is not None:
        return plan_for_flops(model, flops_target, plan_fn=plan, criterion=criterion, policy=policy, per_layer=per_layer, ignore=ignore, round_to=round_to, min_channels=min_channels, scope=scope, data=data, heads=False, head_dims=False, candidates=candidates)  # noqa: E501
    # ---
    if threshold is None and (ratio is None or not 0 <= ratio < 1):
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    if scope not in ("local", "global"):
        raise ValueError(f"scope must be 'local' or 'global', got '{scope}'")
    per_layer = dict(per_layer or {})
    policy_fn = get_policy(policy)
    graph = resolve(flattened(model))  # the one graph every stage below reads
    model = graph.model
    unknown = [n for n in list(per_layer) + list(ignore)
               if n not in {l.name for l in model.layers}]
    if unknown:
        raise ValueError(f"per_layer/ignore name layers that the model does not have: {unknown}")
    groups, skipped_layers = analyse(graph)
    labels = dict(zip(map(id, groups), _labels(groups)))
    result = PrunePlan({}, [], settings=dict(
        ratio=ratio, criterion=criterion if isinstance(criterion, str) else criterion.__name__,
        policy=policy, threshold=threshold, per_layer=per_layer, ignore=list(ignore),
        round_to=round_to, min_channels=min_channels, scope=scope, heads=heads,
        head_dims=head_dims, exact=exact))
    active = []
    for g in groups:
        label = labels[id(g)]
        if g.axis is not None and not unit_axis_wanted(g.axis, heads, head_dims):
            continue
        result.sizes[label] = g.size
        hit = set(ignore) & set(g.producers + g.followers)
        if g.skipped or hit:
            result.skipped[label] = g.skipped or f"ignored ({', '.join(sorted(hit))})"
        else:
            active.append(g)
    result.skipped.update(skipped_layers)
    units = [g for g in active if g.axis is not None]
    active = [g for g in active if g.axis is None]
    names = list(dict.fromkeys(p for g in active for p in g.producers))
    if policy == "depthwise":
        names += [n for n in _scored_followers(graph, active) if n not in names]
    scores = channel_scores(model, names, criterion, data) if names else {}
    scores.update(unit_scores(model, [(g.producers[0], g.axis) for g in units], criterion,
                              data) if units else {})

    keep_counts = _global_keep_counts(active, scores, ratio, round_to, min_channels) \
        if scope == "global" and threshold is None else {}
    for g in active + units:
        members = {g.name: scores[g.name]} if g.axis else _member_scores(g, scores, policy)
        depthwise = next((m for m in members if m not in g.producers), None)
        if threshold is not None:
            proposer = BelowThreshold(threshold)
            chosen = policy_fn(members, proposer, depthwise)
            chosen = _trim(np.asarray(chosen, int), proposer.combine(members), g.size,
                           round_to, min_channels, g.blocks)
        else:
            group_ratio = max((per_layer[p] for p in g.producers if p in per_layer),
                              default=ratio)
            keep = keep_counts.get(id(g)) or _keep_count(g.size, group_ratio, round_to,
                                                          min_channels, g.blocks)
            chosen = policy_fn(members, LowestK(g.size - keep, g.blocks), depthwise)
        result.removed[labels[id(g)]] = len(chosen)
        if g.axis is not None:
            result.units.setdefault(g.producers[0], {})[g.axis] = sorted(int(c) for c in chosen)
            continue
        result.groups.append(list(g.producers))
        result.labels.append(labels[id(g)])
        for p in g.producers:
            lost = g.member_channels(p, chosen)
            if lost:
                result.deletions[p] = sorted(set(result.deletions.get(p, [])) | set(lost))
        if len(chosen) and g.approximate:
            approximated = result.settings.setdefault("approximate", [])
            approximated += [n for n in g.approximate if n not in approximated]
    return result


def _with_deviation(model, result: PrunePlan, data, examples: int = 64) -> PrunePlan:
    """An approximate plan with ``settings["deviation"]`` measured on ``data``."""
    if not result.settings.get("approximate") or data is None:
        return result
    from surgery.pruning.criteria._data import _iter_batches
    from surgery.pruning.execution import apply, verify

    x = next(_iter_batches(data, max_samples=examples, batch_size=examples))[0]
    result.settings["deviation"] = float(verify(model, apply(model, result), result, x))
    return result


def _global_keep_counts(groups, scores, ratio, round_to, min_channels) -> dict[str, int]:
    """One ranking across groups: how many channels each group keeps."""
    ranked = []
    for i, g in enumerate(groups):
        combined = LowestK(0).combine(_member_scores(g, scores, "aggregate"))
        ranked += [(float(s), i) for s in combined]
    budget = math.floor(sum(g.size for g in groups) * ratio)
    lost = [0] * len(groups)
    for _, i in sorted(ranked)[:budget]:
        lost[i] += 1
    return {id(g): _keep_count(g.size, lost[i] / g.size, round_to, min_channels, g.blocks)
            for i, g in enumerate(groups)}

