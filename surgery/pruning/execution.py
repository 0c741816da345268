"""Carrying out a plan, and checking the result.

This module owns :func:`apply` (one surgery pass over every cut of a
:class:`~surgery.pruning.plan.PrunePlan`, weights copied, input untouched: kerassurgeon's
interface through :class:`~surgery.engine.surgeon.Surgeon` for tf-keras models, a
``clone_model`` rebuild for Keras 3 models), :func:`delete_channels`, and :func:`verify`
(the equivalence check of DESIGN.md: the pruned model against the original with the
deleted units zeroed; a plan with bias compensation is carried out on, and checked
against, the compensated original: :mod:`surgery.pruning.compensation`). :func:`cut_graph`
and :func:`difference` are the same for a resolved graph, for the stages above that
already hold one.
"""
from __future__ import annotations

from typing import Iterable

from surgery.engine.adapters import same_adapter
from surgery.engine.compiled import run_once
from surgery.engine.cutting import delete_by_rebuild
from surgery.engine.graph import ModelGraph, resolve
from surgery.engine.rules.base import approximate
from surgery.engine.zeroing import max_relative_difference, zeroed_copy, zeroed_outputs
from surgery.errors import SurgeryError
from surgery.pruning.compensation import compensated
from surgery.pruning.plan import PrunePlan
from surgery.pruning.samples import check_values


def _delete(graph: ModelGraph, plan: PrunePlan):
    if graph.keras3:
        return delete_by_rebuild(graph, plan.deletions, plan.units)
    from surgery.engine.surgeon import Surgeon  # lazy: Keras 2 only, loads kerassurgeon

    surgeon = Surgeon(graph.model)
    for name, channels in plan.deletions.items():
        surgeon.add_job("delete_channels", name, channels=channels)
    for name, cuts in plan.units.items():
        surgeon.delete_units(name, cuts)
    return surgeon.operate()


def _exact(plan: PrunePlan) -> bool:
    return plan.settings.get("exact", True)


def cut_graph(graph: ModelGraph, plan: PrunePlan):
    """:func:`apply` of a resolved graph: a new model without every cut of ``plan``."""
    with approximate(not _exact(plan)):
        return _delete(compensated(graph, plan), plan)


def apply(model, plan: PrunePlan):
    """A new, smaller model with every cut of ``plan`` carried out; ``model`` is
    untouched. The result is a model of the same Keras generation as ``model``.

    Example::

        smaller = surgery.apply(model, surgery.plan(model, ratio=0.3))
    """
    graph = resolve(model, "apply")
    if not isinstance(plan, PrunePlan):
        raise SurgeryError(f"apply(plan=...): plan must be a PrunePlan from surgery.plan(...) "
                           f"or PrunePlan.from_json(text), got {type(plan).__name__}")
    return graph.adapter.with_family(model, cut_graph(graph, plan))


def delete_channels(model, layer, channels: Iterable[int]):
    """Delete ``channels`` from ``layer`` (a name or a layer) and the weights that read
    them downstream.

    Example::

        smaller = surgery.delete_channels(model, "conv1", [0, 5, 7])
    """
    graph = resolve(model, "delete_channels")
    if not graph.keras3:
        from surgery.engine.surgeon import delete_channels as keras2_delete  # lazy: Keras 2

        return keras2_delete(model, layer, channels)
    name = layer if isinstance(layer, str) else layer.name
    return delete_by_rebuild(graph.require_functional(), {name: list(channels)})


#: Keras 3 models with more parameters than this are verified call by call
#: (:func:`~surgery.engine.zeroing.zeroed_outputs`): a zeroed copy would be one more model
#: in memory (and on JAX, one compiled call of a bfloat16 model holds its weights again
#: in float32); smaller ones run a zeroed copy, compiled once, which is faster
STREAMED_PARAMS = 2 ** 28


def difference(graph: ModelGraph, pruned, plan: PrunePlan, x) -> float:
    """:func:`verify` of a resolved graph."""
    with approximate(not _exact(plan)):
        source = compensated(graph, plan)
        if graph.keras3 and graph.model.count_params() > STREAMED_PARAMS:
            zeroed = zeroed_outputs(source, plan.deletions, plan.units, x)
            return max_relative_difference(  # both run call by call, eagerly
                zeroed, run_once(graph.with_model(pruned), x, compiled=False))
        zeroed = zeroed_copy(source, plan.deletions, plan.units)
    return max_relative_difference(run_once(graph.with_model(zeroed), x),
                                   run_once(graph.with_model(pruned), x))


def verify(model, pruned, plan: PrunePlan, x) -> float:
    """Max relative output difference between ``pruned`` and ``model`` with every cut of
    ``plan`` zeroed (0 for an exact cut; float32 models should give ≤ 1e-5).

    Example::

        assert surgery.verify(model, smaller, p, x_batch) <= 1e-5
    """
    graph = resolve(model, "verify")
    resolve(pruned, "verify(pruned=...)")
    same_adapter(model, pruned)
    check_values("verify", "x", x)
    return difference(graph, pruned, plan, x)
