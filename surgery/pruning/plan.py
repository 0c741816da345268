"""Prune plans: a list of cuts, each saying which units of one group go.

This module owns :class:`Cut` and :class:`PrunePlan`, the plain data that planning makes and
:func:`surgery.apply` / :func:`surgery.verify` carry out. Every decision is one
:class:`Cut` of one kind: the channels of a channel group (``unit="channels"``: each
producer of the group loses its channels at the same positions) or the units of one layer
that no tensor carries (``unit`` names the layer's unit axis: ``"heads"``, ``"key_dim"``,
``"value_dim"``, or a composite block's ``"<block>/<axis>"``). A plan is *empty* when no
cut removes anything, and that is the one meaning of "nothing to cut" everywhere.
``deletions`` and ``units`` are read-only views for the engine (layer -> indices). Plans
serialise to JSON; files written before cuts existed (``deletions`` / ``units`` /
``groups``) still load.

>>> p = PrunePlan.from_deletions({"c1": [0, 2]}, [["c1"]], sizes={"c1": 8})
>>> p.empty, p.deletions, [(c.group, c.size, c.removed) for c in p.cuts]
(False, {'c1': [0, 2]}, [('c1', 8, 2)])
>>> PrunePlan.from_json(p.to_json()).deletions
{'c1': [0, 2]}
"""
from __future__ import annotations

import dataclasses
import json
from typing import Mapping, Optional, Sequence

#: ``Cut.unit`` of a cut of a channel group's output channels
CHANNELS = "channels"
#: version of the JSON form written by :meth:`PrunePlan.to_json`
FORMAT = 2


@dataclasses.dataclass
class Cut:
    """Which units of one group go.

    ``group``: the group's unique label (its first producer, ``"mha:heads"`` for a unit
    axis); ``unit``: ``"channels"`` or the layer's unit axis; ``size``: the group's units
    before the cut; ``removed``: how many of them go; ``layers``: every member layer ->
    the indices it loses (producers of a channel group are all listed, with ``[]`` when
    the cut removes nothing).
    """

    group: str
    unit: str
    size: int
    removed: int
    layers: dict[str, list[int]]

    @property
    def channels(self) -> bool:
        """Whether this cut removes a channel group's output channels."""
        return self.unit == CHANNELS

    @property
    def kept(self) -> int:
        return self.size - self.removed


@dataclasses.dataclass
class PrunePlan:
    """What a surgery will delete: ``cuts`` (one :class:`Cut` per group the plan
    considered), ``skipped`` (group or layer -> why it was left alone; ``skipped_sizes``
    their widths) and ``settings`` (what the plan was asked for, and what it reached)."""

    cuts: list[Cut] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    settings: dict = dataclasses.field(default_factory=dict)
    skipped_sizes: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """True when no cut removes anything."""
        return not any(c.removed for c in self.cuts)

    @property
    def channel_cuts(self) -> list[Cut]:
        return [c for c in self.cuts if c.channels]

    @property
    def deletions(self) -> dict[str, list[int]]:
        """Layer -> sorted output channels it loses (a view, for the engine)."""
        merged: dict[str, set] = {}
        for c in self.channel_cuts:
            for layer, indices in c.layers.items():
                if indices:
                    merged.setdefault(layer, set()).update(indices)
        return {layer: sorted(v) for layer, v in merged.items()}

    @property
    def units(self) -> dict[str, dict[str, list[int]]]:
        """Layer -> unit axis -> sorted indices it loses (a view, for the engine)."""
        out: dict[str, dict[str, list[int]]] = {}
        for c in self.cuts:
            if not c.channels:
                for layer, indices in c.layers.items():
                    out.setdefault(layer, {})[c.unit] = sorted(indices)
        return out

    @property
    def groups(self) -> list[list[str]]:
        """The producers of each channel cut."""
        return [list(c.layers) for c in self.channel_cuts]

    @property
    def labels(self) -> list[str]:
        return [c.group for c in self.channel_cuts]

    @property
    def sizes(self) -> dict[str, int]:
        return {**self.skipped_sizes, **{c.group: c.size for c in self.cuts}}

    @property
    def removed(self) -> dict[str, int]:
        return {c.group: c.removed for c in self.cuts}

    @property
    def channels_removed(self) -> int:
        return sum(c.removed for c in self.cuts)

    def to_json(self) -> str:
        return json.dumps(dict(dataclasses.asdict(self), format=FORMAT), indent=1,
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PrunePlan":
        """A plan from :meth:`to_json`'s text, or from a ``plan.json`` written before
        cuts existed (``deletions``, ``groups``, ``units``)."""
        data = json.loads(text)
        if "cuts" not in data:
            return cls.from_deletions(
                data.get("deletions", {}), data.get("groups", []), units=data.get("units"),
                labels=data.get("labels"), sizes=data.get("sizes"),
                removed=data.get("removed"), skipped=data.get("skipped"),
                settings=data.get("settings"))
        cuts = [Cut(c["group"], c["unit"], int(c["size"]), int(c["removed"]),
                    {k: [int(i) for i in v] for k, v in c["layers"].items()})
                for c in data["cuts"]]
        return cls(cuts, dict(data.get("skipped", {})), dict(data.get("settings", {})),
                   {k: int(v) for k, v in data.get("skipped_sizes", {}).items()})

    @classmethod
    def from_deletions(cls, deletions: Mapping[str, Sequence[int]],
                       groups: Optional[Sequence[Sequence[str]]] = None, *,
                       units: Optional[Mapping[str, Mapping[str, Sequence[int]]]] = None,
                       labels: Optional[Sequence[str]] = None,
                       sizes: Optional[Mapping[str, int]] = None,
                       removed: Optional[Mapping[str, int]] = None,
                       skipped: Optional[Mapping[str, str]] = None,
                       settings: Optional[dict] = None) -> "PrunePlan":
        """A plan from layer -> channel indices (``deletions``, with the producers of
        each group in ``groups``; a layer in no group is a group of its own) and layer ->
        unit axis -> indices (``units``): a plan made by hand, or an older file."""
        sizes, removed = dict(sizes or {}), dict(removed or {})
        groups = [list(g) for g in (groups or [])]
        grouped = {p for g in groups for p in g}
        groups += [[name] for name in deletions if name not in grouped]
        labels = list(labels or [g[0] for g in groups])
        cuts, seen = [], set()
        for label, members in zip(labels, groups):
            layers = {p: ([] if p in seen else [int(i) for i in deletions.get(p, ())])
                      for p in members}
            seen.update(members)
            count = removed.get(label, len(deletions.get(members[0], ())))
            cuts.append(Cut(label, CHANNELS, int(sizes.get(label, 0)), int(count), layers))
        for layer, axes in (units or {}).items():
            for axis, indices in axes.items():
                group = f"{layer}:{axis}"
                cuts.append(Cut(group, axis, int(sizes.get(group, 0)),
                                int(removed.get(group, len(indices))),
                                {layer: [int(i) for i in indices]}))
        named = {c.group for c in cuts}
        return cls(cuts, dict(skipped or {}), dict(settings or {}),
                   {k: int(v) for k, v in sizes.items() if k not in named})

    def summary(self) -> str:
        """A table of units before -> after per group."""
        rows = [("group", "layers", "before", "after", "note")]
        for c in self.cuts:
            rows.append((c.group, str(len(c.layers)), str(c.size), str(c.kept), ""))
        for name, reason in self.skipped.items():
            size = self.skipped_sizes.get(name, 0)
            rows.append((name, "", str(size), str(size), "skipped: " + reason))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)
