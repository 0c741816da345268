"""The pruning stage of a ``prune`` run: plan, cut, check, recalibrate, fine-tune.

This module owns what happens between the baseline and the artifacts: ``--iterative``
rounds (one by default) that each plan a share of the budget (or read the plan an
interrupted run saved), cut it with :func:`surgery.apply`, check it with
:func:`surgery.verify`, re-estimate the BatchNormalization statistics
(:func:`surgery.recalibrate_batchnorm`, ``--recalibrate-batches``) and fine-tune; or
``--layerwise``, one channel group at a time (ThiNet's way).
"""
from __future__ import annotations

import logging
import time

import numpy as np

import surgery
from surgery import data as dg
from surgery.cli._context import CutResult, RunSetup
from surgery.cli._kit import Kit, UsageError
from surgery.cli._planning import _prune_once, plan_latency_target, plan_params_target
from surgery.progress import fit_verbose

logger = logging.getLogger("prune_and_finetune")

#: Largest relative output difference :func:`surgery.verify` may report after surgery
#: (the zeroed original against the pruned model; float32).
VERIFY_TOLERANCE = 1e-4


def train_kwargs(args, strategy, kit: Kit):
    extra = {} if kit.generation == 2 else dict(batch_size=args.batch_size, seed=args.seed)
    return dict(strategy=strategy, verbose=fit_verbose(quiet=args.quiet), **extra)


def _verify(original, pruned, p, splits_val) -> float:
    """:func:`surgery.verify` on a few validation images; raises when the cut is not exact."""
    x = dg.as_arrays(splits_val, limit=16)[0] if not isinstance(splits_val, tuple) \
        else np.asarray(splits_val[0][:16])
    diff = float(surgery.verify(original, pruned, p, x))
    if diff > VERIFY_TOLERANCE:
        logger.warning("surgery.verify: the pruned model differs from the zeroed original by "
                       "%.2e (> %g): the cut is not exact; please report the model", diff,
                       VERIFY_TOLERANCE)
    else:
        logger.info("surgery.verify: max relative output difference %.2e", diff)
    return diff


def _recalibrate(model, args, train) -> bool:
    """Adaptive BN after a cut: re-estimate ``model``'s BatchNormalization statistics on
    ``--recalibrate-batches`` training batches (in place); False when turned off (0)."""
    if args.recalibrate_batches <= 0:
        return False
    surgery.recalibrate_batchnorm(model, train, batches=args.recalibrate_batches,
                                  batch_size=args.batch_size, progress=not args.quiet)
    return True


def _finetune_kwargs(setup: RunSetup, teacher) -> dict:
    args = setup.args
    return dict(lr=args.lr, warmup_epochs=args.warmup_epochs, teacher=teacher,
                temperature=args.temperature, alpha=args.kd_alpha,
                **train_kwargs(args, setup.strategy, setup.kit))


def _plan_round(setup: RunSetup, current, data, flops_before: int, k: int):
    """Round ``k``'s plan and cut model: read back from the run folder after an
    interruption, else planned for the round's share of the budget."""
    args, rounds = setup.args, setup.args.iterative
    saved = setup.resume.state.get("rounds", {}).get(str(k))
    if saved is not None:  # planned before the interruption: read back, cut again
        p = surgery.PrunePlan.from_json(saved["plan"])
        logger.info("round %d/%d: the plan saved in %s, applied again", k, rounds,
                    setup.resume.working)
        return p, surgery.apply(current, p), saved
    if setup.latency is not None:
        p, pruned = plan_latency_target(current, args, data)
    elif setup.params is not None:
        p, pruned = plan_params_target(current, args, data)
    elif setup.target is not None:
        goal = 1.0 - (1.0 - setup.target) ** (k / rounds) if rounds > 1 else setup.target
        _, p, pruned = _prune_once(current, args, data, flops_before, goal)
    else:
        step_ratio = 1.0 - (1.0 - args.ratio) ** (1.0 / rounds)
        _, p, pruned = _prune_once(current, args, data, flops_before, ratio=step_ratio)
    return p, pruned, None


def prune_in_rounds(setup: RunSetup, base, data, flops_before: int, teacher) -> CutResult:
    """``--iterative`` rounds (one by default): plan, cut, verify, recalibrate BN,
    fine-tune."""
    args, kit, rounds = setup.args, setup.kit, setup.args.iterative
    cut = CutResult(base, [])
    epochs_left = args.finetune_epochs
    for k in range(1, rounds + 1):
        t0 = time.perf_counter()
        p, pruned, saved = _plan_round(setup, cut.model, data, flops_before, k)
        if saved is not None:
            cut.verify_diffs += saved["verify"]
        elif not p.empty:
            cut.verify_diffs.append(_verify(cut.model, pruned, p, setup.fit[1]))
        pruned = kit.clone_into(pruned, setup.strategy)
        kit.set_bn_momentum(pruned, setup.momentum)
        if saved is None:
            saved = dict(plan=p.to_json(), verify=cut.verify_diffs[-1:] if not p.empty
                         else [], seconds=time.perf_counter() - t0)
            setup.resume.state.setdefault("rounds", {})[str(k)] = saved
            setup.resume.save_state()
        cut.prune_seconds += saved["seconds"]
        cut.plans.append(p)
        _measure_cut(setup, cut, pruned)
        epochs = epochs_left if k == rounds else max(1, args.finetune_epochs // rounds)
        epochs_left -= epochs
        logger.info("round %d/%d: %d FLOPs left, fine-tuning %d epochs", k, rounds,
                    surgery.count_flops(pruned), epochs)
        t0, stage = time.perf_counter(), f"finetune-{k}"
        before = setup.resume.seconds(stage)
        kit.finetune(pruned, setup.fit[0], setup.fit[1], epochs=max(1, epochs),
                     callbacks=setup.resume.callbacks(kit.keras, stage, max(1, epochs)),
                     **_finetune_kwargs(setup, teacher))
        cut.finetune_seconds += before + time.perf_counter() - t0
        cut.model = pruned
    return cut


def _measure_cut(setup: RunSetup, cut: CutResult, pruned) -> None:
    """Accuracy right after the first cut (stale BN statistics), adaptive BN, and the
    accuracy fine-tuning starts from."""
    test = setup.fit[2]
    if cut.acc_pruned is None:
        cut.acc_raw = cut.acc_pruned = setup.kit.evaluate(pruned, test)
    t0 = time.perf_counter()
    recalibrated = _recalibrate(pruned, setup.args, setup.splits.train)
    cut.prune_seconds += time.perf_counter() - t0
    if recalibrated and cut.acc_recalibrated is None:  # what fine-tuning starts from
        cut.acc_recalibrated = cut.acc_pruned = setup.kit.evaluate(pruned, test)


def prune_layerwise(setup: RunSetup, base, data, flops_before: int, teacher) -> CutResult:
    """ThiNet's way: a uniform local ratio (the one meeting the target), applied one group
    at a time with BN recalibration and a brief fine-tune after each, then the full
    fine-tune."""
    args, kit = setup.args, setup.kit
    t0 = time.perf_counter()
    ratio = args.ratio
    if setup.target is not None:
        ratio, _, _ = _prune_once(base, args, data, flops_before, setup.target,
                                  scope="local", check_only=True)
    groups = [g for g in surgery.channel_groups(base) if g.producers and not g.skipped]
    cut = CutResult(base, [], prune_seconds=time.perf_counter() - t0)
    for i, g in enumerate(groups, 1):
        if _cut_one_group(setup, cut, g, ratio, data, teacher):
            logger.info("layerwise %d/%d: group %s, %d FLOPs left", i, len(groups), g.name,
                        surgery.count_flops(cut.model))
    if not cut.plans:
        raise UsageError("--layerwise found no channel group to prune")
    cut.acc_pruned = kit.evaluate(cut.model, setup.fit[2])
    if args.recalibrate_batches > 0:  # measured once: every group cut and recalibrated
        cut.acc_recalibrated = cut.acc_pruned
    t0 = time.perf_counter()
    kit.finetune(cut.model, setup.fit[0], setup.fit[1], epochs=args.finetune_epochs,
                 **_finetune_kwargs(setup, teacher))
    cut.finetune_seconds += time.perf_counter() - t0
    return cut


def _cut_one_group(setup: RunSetup, cut: CutResult, group, ratio: float, data, teacher) -> bool:
    """Cut ``group`` of ``cut.model`` at ``ratio`` (every other layer ignored), recalibrate
    and fine-tune briefly; False when the plan removes nothing."""
    args, kit = setup.args, setup.kit
    t0 = time.perf_counter()
    members = set(group.producers) | set(group.followers)
    ignore = [l.name for l in cut.model.layers if l.name not in members]
    p = surgery.plan(cut.model, ratio=ratio, criterion=args.criterion, policy=args.policy,
                     round_to=args.round_to, min_channels=args.min_channels, scope="local",
                     ignore=ignore, data=data)
    if p.empty:
        return False
    pruned = surgery.apply(cut.model, p)
    cut.verify_diffs.append(_verify(cut.model, pruned, p, setup.fit[1]))
    cut.model = kit.clone_into(pruned, setup.strategy)
    kit.set_bn_momentum(cut.model, setup.momentum)
    _recalibrate(cut.model, args, setup.splits.train)
    cut.plans.append(p)
    cut.prune_seconds += time.perf_counter() - t0
    t0 = time.perf_counter()
    kit.finetune(cut.model, setup.fit[0], None, epochs=1, steps=args.layerwise_steps,
                 **dict(_finetune_kwargs(setup, teacher), warmup_epochs=0.0))
    cut.finetune_seconds += time.perf_counter() - t0
    return True
