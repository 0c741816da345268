"""Carrying out a plan, and checking the result.

This module owns :func:`apply` (one :class:`~surgery.engine.surgeon.Surgeon` pass over a
:class:`~surgery.plan.PrunePlan`, weights copied, input untouched), :func:`prune` (plan +
apply) and :func:`verify` (the equivalence check of DESIGN.md: the pruned model against
the original with the deleted channels zeroed).
"""
from __future__ import annotations

from surgery._backend import keras
from surgery.pruning.arguments import check_model
from surgery.engine.flatten import flattened
from surgery.pruning.planning import PrunePlan, plan as make_plan
from surgery.engine.surgeon import Surgeon
from surgery.engine.zeroing import max_relative_difference, zero_channels



def apply(model: keras.Model, plan: PrunePlan) -> keras.Model:
    """A new, smaller model with ``plan.deletions`` cut out; ``model`` is untouched.

    Example::

        smaller = surgery.apply(model, surgery.plan(model, ratio=0.3))
    """
    check_model(model, "apply")
    if not isinstance(plan, PrunePlan):
        from surgery.errors import SurgeryError
        raise SurgeryError(f"apply(plan=...): plan must be a PrunePlan from surgery.plan(...) "
                           f"or PrunePlan.from_json(text), got {type(plan).__name__}")
    model = flattened(model)
    surgeon = Surgeon(model)
    for name, channels in plan.deletions.items():
        surgeon.add_job("delete_channels", name, channels=channels)
    return surgeon.operate()


def prune(model: keras.Model, **plan_kwargs) -> keras.Model:
    """``apply(model, plan(model, **plan_kwargs))``.

    Example::

        smaller = surgery.prune(model, ratio=0.5, criterion="l1", round_to=8)
    """
    check_model(model, "prune")
    return apply(model, make_plan(model, **plan_kwargs))


def verify(model: keras.Model, pruned: keras.Model, plan: PrunePlan, x) -> float:
    """Max relative output difference between ``pruned`` and ``model`` with the planned
    channels zeroed (0 for an exact cut; float32 models should give ≤ 1e-5).

    Example::

        assert surgery.verify(model, smaller, p, x_batch) <= 1e-5
    """
    check_model(model, "verify")
    check_model(pruned, "verify(pruned=...)")
    zeroed = zero_channels(flattened(model), plan.deletions)
    return max_relative_difference(zeroed(x, training=False), pruned(x, training=False))
