"""Carrying out a plan, and checking the result.

This module owns :func:`apply` (one surgery pass over a
:class:`~surgery.plan.PrunePlan`, weights copied, input untouched: kerassurgeon's
interface through :class:`~surgery.engine.surgeon.Surgeon` for tf-keras models, a
``clone_model`` rebuild for Keras 3 models), :func:`delete_channels`, :func:`prune`
(plan + apply) and :func:`verify` (the equivalence check of DESIGN.md: the pruned model
against the original with the deleted channels zeroed).
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from surgery.engine.adapters import same_adapter
from surgery.engine.cutting import delete_by_rebuild
from surgery.engine.graph import ModelGraph, resolve
from surgery.engine.rules.base import approximate
from surgery.pruning.arguments import check_model, check_values
from surgery.engine.flatten import flattened
from surgery.engine.zeroing import max_relative_difference, zero_channels
from surgery.pruning.planning import PrunePlan, plan as make_plan


def _delete(graph: ModelGraph, deletions: Mapping[str, Sequence[int]], units=None):
    if graph.keras3:
        return delete_by_rebuild(graph, deletions, units)
    from surgery.engine.surgeon import Surgeon  # Keras 2 only: loads kerassurgeon

    surgeon = Surgeon(graph.model)
    for name, channels in deletions.items():
        surgeon.add_job("delete_channels", name, channels=channels)
    for name, cuts in (units or {}).items():
        surgeon.delete_units(name, cuts)
    return surgeon.operate()


def apply(model, plan: PrunePlan):
    """A new, smaller model with ``plan.deletions`` cut out; ``model`` is untouched. The
    result is a model of the same Keras generation as ``model``.

    Example::

        smaller = surgery.apply(model, surgery.plan(model, ratio=0.3))
    """
    graph = check_model(model, "apply")
    if not isinstance(plan, PrunePlan):
        from surgery.errors import SurgeryError
        raise SurgeryError(f"apply(plan=...): plan must be a PrunePlan from surgery.plan(...) "
                           f"or PrunePlan.from_json(text), got {type(plan).__name__}")
    with approximate(not plan.settings.get("exact", True)):
        return _delete(resolve(flattened(graph)), plan.deletions, plan.units)


def delete_channels(model, layer, channels: Iterable[int]):
    """Delete ``channels`` from ``layer`` (a name or a layer) and the weights that read
    them downstream.

    Example::

        smaller = surgery.delete_channels(model, "conv1", [0, 5, 7])
    """
    graph = check_model(model, "delete_channels")
    if not graph.keras3:
        from surgery.engine.surgeon import delete_channels as keras2_delete

        return keras2_delete(model, layer, channels)
    name = layer if isinstance(layer, str) else layer.name
    return delete_by_rebuild(graph, {name: list(channels)})


def prune(model, **plan_kwargs):
    """``apply(model, plan(model, **plan_kwargs))``.

    Example::

        smaller = surgery.prune(model, ratio=0.5, criterion="l1", round_to=8)
    """
    check_model(model, "prune")
    return apply(model, make_plan(model, **plan_kwargs))


def verify(model, pruned, plan: PrunePlan, x) -> float:
    """Max relative output difference between ``pruned`` and ``model`` with the planned
    channels zeroed (0 for an exact cut; float32 models should give ≤ 1e-5).

    Example::

        assert surgery.verify(model, smaller, p, x_batch) <= 1e-5
    """
    graph = check_model(model, "verify")
    check_model(pruned, "verify(pruned=...)")
    same_adapter(model, pruned)
    check_values("verify", "x", x)
    with approximate(not plan.settings.get("exact", True)):
        zeroed = zero_channels(flattened(graph), plan.deletions, plan.units)
    return max_relative_difference(zeroed(x, training=False), pruned(x, training=False))
