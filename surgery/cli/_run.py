"""The stages of the ``prune`` pipeline, written once for both Keras generations.

This module owns what :func:`run` does with parsed arguments: load the model (or build and
train a baseline), evaluate it, plan the cut (``--ratio`` or ``--flops-target`` through
``surgery.plan(flops_target=...)``, ``--criterion``, ``--policy``), apply it with
:func:`surgery.apply` and check it with :func:`surgery.verify`, re-estimate the
BatchNormalization statistics of the cut model on ``--recalibrate-batches`` training batches
(:func:`surgery.recalibrate_batchnorm`, after every cut), fine-tune with warmup +
cosine decay (optionally distilling, in ``--iterative`` rounds or ``--layerwise``), measure
again and write ``pruned.<h5|keras>``, ``baseline.<h5|keras>``, ``plan.json``, the report
and the PNGs. What differs between tf-keras and Keras 3 (loading, training, evaluation,
saving, strategies, data form) comes from a :class:`surgery.cli._kit.Kit`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import logging
import os
import time
from typing import Any, Optional

import numpy as np

import surgery
from surgery._startup import muted_stderr
from surgery.cli import usage
from surgery.cli._kit import Kit, UsageError, kit_for_process
from surgery.cli._workers import artifact_folder, is_chief, worker_name
from surgery.cli._planning import (_criterion_data, _merge_plans, _plan_ratio, _prune_once,
                                   latency_report, plan_flops_target, plan_latency_target)
from surgery.pruning import criteria as _criteria
from surgery.pipeline.artifacts import write_plots, write_tflite
from surgery.pipeline.resume import RunFolder
from surgery.progress import fit_verbose
from surgery.pipeline.report import atomic_write, build_report, gzip_size, write_report

logger = logging.getLogger("prune_and_finetune")

#: Largest relative output difference :func:`surgery.verify` may report after surgery
#: (the zeroed original against the pruned model; float32).
VERIFY_TOLERANCE = 1e-4


@dataclasses.dataclass
class RunResult:
    """What :func:`run` produced: the folder, artifact paths, report and pruned model."""

    out: str
    pruned_path: str
    plan_path: str
    report_path: str
    markdown_path: str
    report: dict
    model: Any
    baseline_path: Optional[str] = None
    files: tuple = ()  # every file the run wrote, relative to ``out``
    chief: bool = True  # False on a non-chief worker: it wrote nothing (paths: the chief's)
    worker: str = ""  # e.g. "worker 1 of 2" under --strategy multiworker


def check_generation(args: argparse.Namespace, kit: Kit) -> None:
    """Refuse a ``--keras`` or ``--model-path`` this process's Keras generation cannot
    serve (the start-up chose the generation; see :func:`surgery._startup.keras_generation`)."""
    usage.check_generation(args.model_path, args.keras, kit.generation,
                           "prune_and_finetune.py")


def _load_data(args: argparse.Namespace, input_shape: Optional[tuple]):
    from surgery import data as dg

    if input_shape is not None:
        size, channels = tuple(input_shape[:2]), input_shape[2]
    else:
        size, channels = (args.image_size, args.image_size), args.channels
    try:
        return dg.load_splits(args.data, image_size=size, channels=channels,
                              batch_size=args.batch_size, seed=args.seed)
    except dg.DataError as exc:
        raise UsageError(f"data {args.data!r}: {str(exc).splitlines()[0]}") from None


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------
def _validate(args: argparse.Namespace) -> None:
    from surgery import models

    if args.model_path is None and args.model not in models.MODELS:
        raise UsageError(f"unknown model {args.model!r}; known models: "
                         f"{', '.join(sorted(models.MODELS))}")
    if args.ratio is not None and not 0.0 < args.ratio < 1.0:
        raise UsageError(f"--ratio must be in (0, 1), got {args.ratio}")
    if args.ratio is None and not 0.0 < args.flops_target < 1.0:
        raise UsageError(f"--flops-target must be in (0, 1), got {args.flops_target}")
    latency = getattr(args, "latency_target", None)
    if latency is not None and (not 0.0 < latency < 1.0 or args.ratio is not None
                                or args.iterative > 1 or args.layerwise):
        raise UsageError(f"--latency-target must be in (0, 1) and comes without --ratio, "
                         f"--iterative and --layerwise, got {latency}")
    if not 0.0 < args.max_ratio < 1.0:
        raise UsageError(f"--max-ratio must be in (0, 1), got {args.max_ratio}")
    if args.criterion not in _criteria.CRITERIA:
        raise UsageError(f"unknown criterion {args.criterion!r}; known criteria: "
                         f"{', '.join(sorted(_criteria.CRITERIA))}")
    if args.candidates < 1:
        raise UsageError(f"--candidates must be >= 1 (1 turns the comparison off), got "
                         f"{args.candidates}")
    if args.recalibrate_batches < 0:
        raise UsageError(f"--recalibrate-batches must be >= 0 (0 turns adaptive BN off), "
                         f"got {args.recalibrate_batches}")
    if args.iterative < 1:
        raise UsageError(f"--iterative must be >= 1, got {args.iterative}")
    if args.iterative > 1 and args.layerwise:
        raise UsageError("--iterative and --layerwise cannot be combined; pick one")
    if args.finetune_epochs < 1 or args.baseline_epochs < 1:
        raise UsageError("--finetune-epochs and --baseline-epochs must be >= 1")
    if args.lr <= 0 or args.baseline_lr <= 0:
        raise UsageError("learning rates must be > 0")
    if args.round_to < 1 or args.min_channels < 1:
        raise UsageError("--round-to and --min-channels must be >= 1")
    if args.model_path is not None and not os.path.isfile(args.model_path):
        raise UsageError(f"model file not found: {args.model_path}")




# --------------------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------------------
def _timestamp_folder() -> str:
    base = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    out, n = base, 1
    while os.path.exists(out):
        n += 1
        out = f"{base}-{n}"
    return out


#: flags that do not change what a run computes: a run resumes whatever they say
_NOT_SETTINGS = ("out", "quiet", "overwrite", "plots", "tflite")


def _run_folder(args: argparse.Namespace, kit: Kit, out: str) -> RunFolder:
    """The resumable run folder ``out`` (:mod:`surgery.pipeline.resume`): refuses a finished
    run's folder (unless ``--overwrite``) and an unfinished one started with other settings.
    Under ``--strategy multiworker`` nothing resumes (every worker would have to)."""
    settings = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}
    settings.update(keras_generation=kit.generation, keras_backend=kit.backend)
    folder = RunFolder(out, settings, finished="report.json",
                       overwrite=getattr(args, "overwrite", False),
                       enabled=args.strategy != "multiworker")
    folder.check()
    return folder


def _train_kwargs(args, strategy, kit: Kit):
    extra = {} if kit.generation == 2 else dict(batch_size=args.batch_size, seed=args.seed)
    return dict(strategy=strategy, verbose=fit_verbose(quiet=args.quiet), **extra)


def _verify(original, pruned, p, splits_val) -> float:
    """:func:`surgery.verify` on a few validation images; raises when the cut is not exact."""
    from surgery.data import as_arrays

    x = as_arrays(splits_val, limit=16)[0] if not isinstance(splits_val, tuple) \
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


def run(args: argparse.Namespace, kit: Optional[Kit] = None) -> RunResult:
    """Run the whole pipeline for parsed ``args``; raises :class:`UsageError` for user
    errors before anything is written.

    Example::

        result = run(build_parser().parse_args(["--model", "lenet5", "--out", "runs/t"]))
        result.report["acc_finetuned"]
    """
    from surgery import models

    _validate(args)
    kit = kit or kit_for_process()
    check_generation(args, kit)
    try:  # first TensorFlow work: collective ops (multiworker) are configured only here
        strategy = kit.make_strategy(args.strategy)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    devices = kit.replicas(strategy)
    if kit.generation == 3 and args.batch_size % devices:
        raise UsageError(f"--batch-size {args.batch_size} must be a multiple of the {devices} "
                         f"devices of --strategy {args.strategy}")
    kit.keras.utils.set_random_seed(args.seed)
    loaded = kit.load(args.model_path, args.trust_model_code) if args.model_path else None
    splits = _load_data(args, tuple(loaded.input_shape[1:]) if loaded is not None else None)
    if loaded is not None and loaded.output_shape[-1] != splits.num_classes:
        raise UsageError(f"{args.model_path} has {loaded.output_shape[-1]} outputs but data "
                         f"{args.data!r} has {splits.num_classes} classes")
    if args.tflite and kit.backend != "tensorflow":
        raise UsageError(f"--tflite needs the TensorFlow backend (this run: {kit.label}); "
                         "set KERAS_BACKEND=tensorflow")
    train, val, test = (kit.fit_data(d) for d in (splits.train, splits.val, splits.test))
    momentum = args.bn_momentum if args.bn_momentum > 0 else None
    out = args.out or _timestamp_folder()
    in_path = os.path.abspath(args.model_path) if args.model_path else None
    pruned_path = os.path.abspath(os.path.join(out, f"pruned.{kit.ext}"))
    if in_path is not None and pruned_path == in_path:
        raise UsageError(f"--out {out} would overwrite the input model {args.model_path}")
    resume = _run_folder(args, kit, out)

    if loaded is None:
        build = models.MODELS[args.model]
        kw = dict(input_shape=splits.input_shape, classes=splits.num_classes,
                  **kit.model_kwargs())
        if "alpha" in inspect.signature(build).parameters:
            kw["alpha"] = args.alpha
        with kit.scope(strategy):
            base = build(**kw)
    else:
        base = kit.clone_into(loaded, strategy)
    kit.set_bn_momentum(base, momentum)
    flops_before = surgery.count_flops(base)
    latency = getattr(args, "latency_target", None)
    target = None if args.ratio is not None or latency is not None else args.flops_target
    if target is not None:  # fail early (before any training) if the target is unreachable
        _prune_once(base, args, _criterion_data(args, splits), flops_before, target,
                    check_only=True)
    resume.start()

    baseline_seconds = 0.0
    if loaded is None:
        t0, before = time.perf_counter(), resume.seconds("baseline")
        kit.finetune(base, train, val, epochs=args.baseline_epochs,
                     lr=args.baseline_lr, warmup_epochs=1, stage="training the baseline",
                     callbacks=resume.callbacks(kit.keras, "baseline", args.baseline_epochs),
                     **_train_kwargs(args, strategy, kit))
        baseline_seconds = before + time.perf_counter() - t0
    acc_baseline = kit.evaluate(base, test)
    params_before = base.count_params()
    data = _criterion_data(args, splits)

    teacher = None
    if args.distill:  # a frozen copy, so that base (saved as the baseline) stays trainable
        teacher = kit.copy_model(base, strategy)

    prune_seconds = finetune_seconds = 0.0
    plans, acc_pruned = [], None
    acc_raw = acc_recalibrated = None  # right after the first cut: stale BN / recalibrated
    current = base
    ft = dict(lr=args.lr, warmup_epochs=args.warmup_epochs, teacher=teacher,
              temperature=args.temperature, alpha=args.kd_alpha,
              **_train_kwargs(args, strategy, kit))
    verify_diffs: list = []
    if args.layerwise:
        current, plans, acc_pruned, prune_seconds, finetune_seconds = _layerwise(
            base, args, kit, (train, val, test), data, flops_before, target, strategy, ft,
            momentum, verify_diffs, splits.train)
        if args.recalibrate_batches > 0:  # measured once: every group cut and recalibrated
            acc_recalibrated = acc_pruned
    else:
        rounds = args.iterative
        epochs_left = args.finetune_epochs
        for k in range(1, rounds + 1):
            t0 = time.perf_counter()
            saved = resume.state.get("rounds", {}).get(str(k))
            if saved is not None:  # planned before the interruption: read back, cut again
                p = surgery.PrunePlan.from_json(saved["plan"])
                pruned = surgery.apply(current, p)
                logger.info("round %d/%d: the plan saved in %s, applied again", k, rounds,
                            resume.working)
            elif latency is not None:
                p, pruned = plan_latency_target(current, args, data)
            elif target is not None:
                goal = 1.0 - (1.0 - target) ** (k / rounds) if rounds > 1 else target
                _, p, pruned = _prune_once(current, args, data, flops_before, goal)
            else:
                step_ratio = 1.0 - (1.0 - args.ratio) ** (1.0 / rounds)
                _, p, pruned = _prune_once(current, args, data, flops_before, ratio=step_ratio)
            if saved is not None:
                verify_diffs += saved["verify"]
            elif not p.empty:
                verify_diffs.append(_verify(current, pruned, p, val))
            pruned = kit.clone_into(pruned, strategy)
            kit.set_bn_momentum(pruned, momentum)
            if saved is None:
                saved = dict(plan=p.to_json(), verify=verify_diffs[-1:] if not p.empty else [],
                             seconds=time.perf_counter() - t0)
                resume.state.setdefault("rounds", {})[str(k)] = saved
                resume.save_state()
            prune_seconds += saved["seconds"]
            plans.append(p)
            if acc_pruned is None:  # right after the cut, stale BatchNormalization statistics
                acc_raw = acc_pruned = kit.evaluate(pruned, test)
            t0 = time.perf_counter()
            recalibrated = _recalibrate(pruned, args, splits.train)
            prune_seconds += time.perf_counter() - t0
            if recalibrated and acc_recalibrated is None:  # what fine-tuning starts from
                acc_recalibrated = acc_pruned = kit.evaluate(pruned, test)
            epochs = epochs_left if k == rounds else max(1, args.finetune_epochs // rounds)
            epochs_left -= epochs
            logger.info("round %d/%d: %d FLOPs left, fine-tuning %d epochs", k, rounds,
                        surgery.count_flops(pruned), epochs)
            t0, stage = time.perf_counter(), f"finetune-{k}"
            before = resume.seconds(stage)
            kit.finetune(pruned, train, val, epochs=max(1, epochs),
                         callbacks=resume.callbacks(kit.keras, stage, max(1, epochs)), **ft)
            finetune_seconds += before + time.perf_counter() - t0
            current = pruned
    acc_finetuned = kit.evaluate(current, test)
    flops_after = surgery.count_flops(current)

    chief, chief_pruned = is_chief(strategy), pruned_path
    with artifact_folder(out, chief) as folder:  # a deleted scratch folder off the chief
        baseline_path = None
        pruned_path = os.path.abspath(os.path.join(folder, os.path.basename(pruned_path)))
        if loaded is None:
            baseline_path = kit.save(base, os.path.join(folder, f"baseline.{kit.ext}"))
        ref_path = in_path or baseline_path
        # "before" size like the pruned one: saved the same way, no optimizer state
        ref_sizes = (os.path.getsize(baseline_path), gzip_size(baseline_path)) \
            if baseline_path else kit.saved_sizes(base)
        kit.save(current, pruned_path, forbid=in_path)
        plan_text = plans[0].to_json() if len(plans) == 1 else \
            json.dumps(_merge_plans(plans), indent=1, sort_keys=True)
        plan_path = atomic_write(os.path.join(folder, "plan.json"), plan_text)
        values = dict(
            params_before=int(params_before), params_after=int(current.count_params()),
            flops_before=int(flops_before), flops_after=int(flops_after),
            acc_baseline=acc_baseline, acc_pruned=acc_pruned, acc_finetuned=acc_finetuned,
            acc_pruned_raw=acc_raw, acc_recalibrated=acc_recalibrated,
            recalibrate_batches=args.recalibrate_batches,
            h5_bytes=os.path.getsize(pruned_path), h5_gzip_bytes=gzip_size(pruned_path),
            h5_bytes_baseline=ref_sizes[0], h5_gzip_bytes_baseline=ref_sizes[1],
            prune_seconds=round(prune_seconds, 3),
            finetune_seconds=round(finetune_seconds, 3),
            baseline_seconds=round(baseline_seconds, 3),
            model=args.model if loaded is None else os.path.basename(args.model_path),
            data=str(args.data), input_shape=list(splits.input_shape),
            criterion=args.criterion, policy=args.policy, scope=args.scope,
            ratio=args.ratio, flops_target=target, iterative=args.iterative,
            flops_removed=round(1.0 - flops_after / max(flops_before, 1), 6),
            plan_ratio=_plan_ratio(plans),
            candidate_scores=plans[0].settings.get("candidate_scores"),
            candidate=plans[0].settings.get("candidate"),
            layerwise=args.layerwise, distill=args.distill, strategy=args.strategy,
            replicas=kit.replicas(strategy), seed=args.seed,
            keras_generation=kit.generation, keras_backend=kit.backend,
            model_format=kit.ext,
            verify_max_diff=max(verify_diffs) if verify_diffs else None,
            finetune_epochs=args.finetune_epochs, lr=args.lr, resumes=resume.resumes,
            warmup_epochs=args.warmup_epochs, pruned_h5=pruned_path, baseline_h5=ref_path)
        if args.plots:
            from surgery.data import as_arrays
            values.update(write_plots(base, current, as_arrays(splits.val), folder,
                                      criterion=args.criterion, progress=not args.quiet,
                                      chosen_flops=flops_after))
        if args.tflite:
            with muted_stderr() if args.quiet else contextlib.nullcontext():
                values.update(write_tflite(base, current, splits, folder,
                                           progress=not args.quiet))
        if latency is not None:
            values.update(latency_report(plans))
        report = build_report(values)
        json_path, md_path = write_report(folder, report)
    resume.finish()  # every artifact is in place: nothing is left to resume
    written = [baseline_path, pruned_path, plan_path, json_path, md_path]
    written += [v for k, v in values.items() if k.endswith("_png")]
    written += [row["path"] for row in values.get("tflite", ())]
    files = tuple(os.path.relpath(p, folder) for p in written if p) if chief else ()
    if not chief:  # name the chief's files, not the deleted scratch copies
        baseline_path, plan_path, json_path, md_path = (
            p and os.path.join(out, os.path.basename(p))
            for p in (baseline_path, plan_path, json_path, md_path))
        pruned_path = chief_pruned
    return RunResult(out, pruned_path, plan_path, json_path, md_path, report, current,
                     baseline_path, files, chief, worker_name(strategy))


def _layerwise(base, args, kit, fit_splits, data, flops_ref, target, strategy, ft, momentum,
               verify_diffs, recalibration_data):
    """ThiNet's way: a uniform local ratio (the one meeting the target), applied one group
    at a time with BN recalibration and a brief fine-tune after each, then the full
    fine-tune."""
    t0 = time.perf_counter()
    if target is not None:
        ratio, _, _ = _prune_once(base, args, data, flops_ref, target, scope="local",
                                  check_only=True)
    else:
        ratio = args.ratio
    train, val, test = fit_splits
    groups = [g for g in surgery.channel_groups(base) if g.producers and not g.skipped]
    prune_seconds, finetune_seconds, plans = time.perf_counter() - t0, 0.0, []
    current, acc_pruned = base, None
    all_layers = [l.name for l in base.layers]
    brief = dict(ft, warmup_epochs=0.0)
    for i, g in enumerate(groups, 1):
        t0 = time.perf_counter()
        members = set(g.producers) | set(g.followers)
        names = {l.name for l in current.layers}
        ignore = [n for n in all_layers if n in names and n not in members]
        p = surgery.plan(current, ratio=ratio, criterion=args.criterion, policy=args.policy,
                         round_to=args.round_to, min_channels=args.min_channels,
                         scope="local", ignore=ignore, data=data)
        if p.empty:
            continue
        cut = surgery.apply(current, p)
        verify_diffs.append(_verify(current, cut, p, val))
        current = kit.clone_into(cut, strategy)
        kit.set_bn_momentum(current, momentum)
        _recalibrate(current, args, recalibration_data)
        plans.append(p)
        prune_seconds += time.perf_counter() - t0
        logger.info("layerwise %d/%d: group %s, %d FLOPs left", i, len(groups), g.name,
                    surgery.count_flops(current))
        t0 = time.perf_counter()
        kit.finetune(current, train, None, epochs=1, steps=args.layerwise_steps, **brief)
        finetune_seconds += time.perf_counter() - t0
    if not plans:
        raise UsageError("--layerwise found no channel group to prune")
    acc_pruned = kit.evaluate(current, test)
    t0 = time.perf_counter()
    kit.finetune(current, train, val, epochs=args.finetune_epochs, **ft)
    finetune_seconds += time.perf_counter() - t0
    return current, plans, acc_pruned, prune_seconds, finetune_seconds


