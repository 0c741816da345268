"""The ``prune`` pipeline, written once for both Keras generations.

This module owns what :func:`run` does with parsed arguments and the stages around the
cut: check them and load the model (or build and train a baseline), evaluate it, fail
early when the plan would be unreachable or empty, hand over to the pruning stage
(:mod:`surgery.cli._rounds`: plan, cut, verify, recalibrate, fine-tune), measure again and
write ``pruned.<h5|keras>``, ``baseline.<h5|keras>``, ``plan.json``, the report and the
PNGs. What differs between tf-keras and Keras 3 (loading, training, evaluation, saving,
strategies, data form) comes from a :class:`surgery.cli._kit.Kit`.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import os
import time
from typing import Optional

import surgery
from surgery import data as dg
from surgery import models
from surgery._startup import muted_stderr
from surgery.cli import usage
from surgery.cli._kit import Kit, UsageError, kit_for_process
from surgery.cli._workers import artifact_folder, is_chief, worker_name
from surgery.cli._context import CutResult, RunResult, RunSetup
from surgery.cli._planning import (_criterion_data, _merge_plans, _plan_ratio, _prune_once,
                                   latency_report, plan_params_target)
from surgery.cli._rounds import (VERIFY_TOLERANCE, prune_in_rounds,  # noqa: F401
                                 prune_layerwise, train_kwargs)
from surgery.pruning import criteria as _criteria
from surgery.pipeline.artifacts import write_plots, write_tflite
from surgery.pipeline.resume import RunFolder
from surgery.pipeline.report import atomic_write, build_report, gzip_size, write_report

logger = logging.getLogger("prune_and_finetune")


def check_generation(args: argparse.Namespace, kit: Kit) -> None:
    """Refuse a ``--keras`` or ``--model-path`` this process's Keras generation cannot
    serve (the start-up chose the generation; see :func:`surgery._startup.keras_generation`)."""
    usage.check_generation(args.model_path, args.keras, kit.generation,
                           "prune_and_finetune.py")


def _load_data(args: argparse.Namespace, input_shape: Optional[tuple]):
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
    params = getattr(args, "params_target", None)
    if params is not None and (not 0.0 < params < 1.0 or args.ratio is not None
                               or latency is not None or args.iterative > 1
                               or args.layerwise):
        raise UsageError(f"--params-target must be in (0, 1) and comes without --ratio, "
                         f"--latency-target, --iterative and --layerwise, got {params}")
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
def timestamp_folder() -> str:
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


def run(args: argparse.Namespace, kit: Optional[Kit] = None) -> RunResult:
    """Run the whole pipeline for parsed ``args``; raises :class:`UsageError` for user
    errors before anything is written.

    Example::

        result = run(build_parser().parse_args(["--model", "lenet5", "--out", "runs/t"]))
        result.report["acc_finetuned"]
    """
    setup = _set_up(args, kit or kit_for_process())
    base = _base_model(setup)
    flops_before = surgery.count_flops(base)
    _check_plan_early(setup, base, flops_before)
    setup.resume.start()
    baseline_seconds = _train_baseline(setup, base)
    acc_baseline = setup.kit.evaluate(base, setup.fit[2])
    data = _criterion_data(args, setup.splits)
    teacher = setup.kit.copy_model(base, setup.strategy) if args.distill else None
    if args.layerwise:
        cut = prune_layerwise(setup, base, data, flops_before, teacher)
    else:
        cut = prune_in_rounds(setup, base, data, flops_before, teacher)
    values = dict(params_before=int(base.count_params()), flops_before=int(flops_before),
                  acc_baseline=acc_baseline, baseline_seconds=round(baseline_seconds, 3))
    return _finish(setup, base, cut, values)


def _set_up(args: argparse.Namespace, kit: Kit) -> RunSetup:
    """Checks, strategy, the loaded model, data and the run folder; nothing is written."""
    _validate(args)
    check_generation(args, kit)
    try:  # first TensorFlow work: collective ops (multiworker) are configured only here
        strategy = kit.make_strategy(args.strategy)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if kit.generation == 3 and args.batch_size % kit.replicas(strategy):
        raise UsageError(f"--batch-size {args.batch_size} must be a multiple of the "
                         f"{kit.replicas(strategy)} devices of --strategy {args.strategy}")
    kit.keras.utils.set_random_seed(args.seed)
    loaded = kit.load(args.model_path, args.trust_model_code) if args.model_path else None
    splits = _load_data(args, tuple(loaded.input_shape[1:]) if loaded is not None else None)
    if loaded is not None and loaded.output_shape[-1] != splits.num_classes:
        raise UsageError(f"{args.model_path} has {loaded.output_shape[-1]} outputs but data "
                         f"{args.data!r} has {splits.num_classes} classes")
    if args.tflite and kit.backend != "tensorflow":
        raise UsageError(f"--tflite needs the TensorFlow backend (this run: {kit.label}); "
                         "set KERAS_BACKEND=tensorflow")
    fit = tuple(kit.fit_data(d) for d in (splits.train, splits.val, splits.test))
    out = args.out or timestamp_folder()
    in_path = os.path.abspath(args.model_path) if args.model_path else None
    pruned_path = os.path.abspath(os.path.join(out, f"pruned.{kit.ext}"))
    if in_path is not None and pruned_path == in_path:
        raise UsageError(f"--out {out} would overwrite the input model {args.model_path}")
    return RunSetup(args, kit, strategy, loaded, splits, fit,
                  args.bn_momentum if args.bn_momentum > 0 else None, out, in_path,
                  pruned_path, _run_folder(args, kit, out))


def _base_model(setup: RunSetup):
    """The model to prune: a new ``--model`` baseline, or the loaded one, under the
    strategy, with the run's BN momentum."""
    args, kit = setup.args, setup.kit
    if setup.loaded is None:
        build = models.MODELS[args.model]
        kw = dict(input_shape=setup.splits.input_shape, classes=setup.splits.num_classes,
                  **kit.model_kwargs())
        if "alpha" in inspect.signature(build).parameters:
            kw["alpha"] = args.alpha
        with kit.scope(setup.strategy):
            base = build(**kw)
    else:
        base = kit.clone_into(setup.loaded, setup.strategy)
    kit.set_bn_momentum(base, setup.momentum)
    return base


def _check_plan_early(setup: RunSetup, base, flops_before: int) -> None:
    """Fail before any training when the FLOPs target is unreachable or the plan would
    remove nothing (a latency plan is checked where it is made: it needs timing)."""
    args = setup.args
    if setup.latency is not None or args.iterative > 1 and setup.target is None:
        return
    data = _criterion_data(args, setup.splits)
    if setup.params is not None:
        plan_params_target(base, args, data, apply=False)
    elif setup.target is not None:
        _prune_once(base, args, data, flops_before, setup.target, check_only=True)
    elif not args.layerwise:
        _prune_once(base, args, data, flops_before, ratio=args.ratio, check_only=True)


def _train_baseline(setup: RunSetup, base) -> float:
    """Train a new baseline (not a loaded model); returns its seconds, resumed included."""
    if setup.loaded is not None:
        return 0.0
    args, kit, train, val = setup.args, setup.kit, setup.fit[0], setup.fit[1]
    t0, before = time.perf_counter(), setup.resume.seconds("baseline")
    kit.finetune(base, train, val, epochs=args.baseline_epochs, lr=args.baseline_lr,
                 warmup_epochs=1, stage="training the baseline",
                 callbacks=setup.resume.callbacks(kit.keras, "baseline", args.baseline_epochs),
                 **train_kwargs(args, setup.strategy, kit))
    return before + time.perf_counter() - t0


def _finish(setup: RunSetup, base, cut: CutResult, values: dict) -> RunResult:
    """Measure the fine-tuned model, write every artifact (the chief only), finish the
    run folder."""
    values.update(acc_finetuned=setup.kit.evaluate(cut.model, setup.fit[2]),
                  flops_after=int(surgery.count_flops(cut.model)))
    chief, chief_pruned = is_chief(setup.strategy), setup.pruned_path
    with artifact_folder(setup.out, chief) as folder:  # a deleted scratch folder off the chief
        paths, report = _write_artifacts(setup, base, cut, values, folder)
    setup.resume.finish()  # every artifact is in place: nothing is left to resume
    baseline_path, pruned_path, plan_path, json_path, md_path = paths
    written = list(paths) + [v for k, v in values.items() if k.endswith("_png")]
    written += [row["path"] for row in values.get("tflite", ())]
    files = tuple(os.path.relpath(p, folder) for p in written if p) if chief else ()
    if not chief:  # name the chief's files, not the deleted scratch copies
        baseline_path, plan_path, json_path, md_path = (
            p and os.path.join(setup.out, os.path.basename(p))
            for p in (baseline_path, plan_path, json_path, md_path))
        pruned_path = chief_pruned
    return RunResult(setup.out, pruned_path, plan_path, json_path, md_path, report, cut.model, baseline_path, files, chief, worker_name(setup.strategy))


def _write_artifacts(setup: RunSetup, base, cut: CutResult, values: dict, folder: str) -> tuple:
    """Models, ``plan.json``, plots, TFLite files and the report, in ``folder``; returns
    the paths of the baseline (or ``None``), pruned model, plan and report files, and the
    report."""
    kit = setup.kit
    baseline_path = None
    pruned_path = os.path.abspath(os.path.join(folder, os.path.basename(setup.pruned_path)))
    if setup.loaded is None:
        baseline_path = kit.save(base, os.path.join(folder, f"baseline.{kit.ext}"))
    # "before" size like the pruned one: saved the same way, no optimizer state
    ref_sizes = (os.path.getsize(baseline_path), gzip_size(baseline_path)) \
        if baseline_path else kit.saved_sizes(base)
    kit.save(cut.model, pruned_path, forbid=setup.in_path)
    plans = cut.plans
    plan_text = plans[0].to_json() if len(plans) == 1 else \
        json.dumps(_merge_plans(plans), indent=1, sort_keys=True)
    plan_path = atomic_write(os.path.join(folder, "plan.json"), plan_text)
    values.update(_report_values(setup, cut, pruned_path, ref_sizes,
                                 setup.in_path or baseline_path))
    _extras(setup, base, cut, values, folder)
    report = build_report(values)
    json_path, md_path = write_report(folder, report)
    return (baseline_path, pruned_path, plan_path, json_path, md_path), report


def _report_values(setup: RunSetup, cut: CutResult, pruned_path: str, ref_sizes, ref_path) -> dict:
    """The report's keys besides the baseline's (DESIGN.md: Report)."""
    args, kit, plans = setup.args, setup.kit, cut.plans
    return dict(
        params_after=int(cut.model.count_params()),
        acc_pruned=cut.acc_pruned, acc_pruned_raw=cut.acc_raw,
        acc_recalibrated=cut.acc_recalibrated, recalibrate_batches=args.recalibrate_batches,
        h5_bytes=os.path.getsize(pruned_path), h5_gzip_bytes=gzip_size(pruned_path),
        h5_bytes_baseline=ref_sizes[0], h5_gzip_bytes_baseline=ref_sizes[1],
        prune_seconds=round(cut.prune_seconds, 3),
        finetune_seconds=round(cut.finetune_seconds, 3),
        model=args.model if setup.loaded is None else os.path.basename(args.model_path),
        data=str(args.data), input_shape=list(setup.splits.input_shape),
        criterion=args.criterion, policy=args.policy, scope=args.scope,
        ratio=args.ratio, flops_target=setup.target, iterative=args.iterative,
        plan_ratio=_plan_ratio(plans),
        candidate_scores=plans[0].settings.get("candidate_scores"),
        candidate=plans[0].settings.get("candidate"),
        layerwise=args.layerwise, distill=args.distill, strategy=args.strategy,
        replicas=kit.replicas(setup.strategy), seed=args.seed,
        keras_generation=kit.generation, keras_backend=kit.backend, model_format=kit.ext,
        verify_max_diff=max(cut.verify_diffs) if cut.verify_diffs else None,
        finetune_epochs=args.finetune_epochs, lr=args.lr, resumes=setup.resume.resumes,
        warmup_epochs=args.warmup_epochs, pruned_h5=pruned_path, baseline_h5=ref_path)


def _extras(setup: RunSetup, base, cut: CutResult, values: dict, folder: str) -> None:
    """FLOPs removed, plots, TFLite files and the latency keys, into ``values``."""
    args = setup.args
    values["flops_removed"] = round(1.0 - values["flops_after"] /
                                    max(values["flops_before"], 1), 6)
    if args.plots:
        values.update(write_plots(base, cut.model, dg.as_arrays(setup.splits.val), folder,
                                  criterion=args.criterion, progress=not args.quiet,
                                  chosen_flops=values["flops_after"]))
    if args.tflite:
        with muted_stderr() if args.quiet else contextlib.nullcontext():
            values.update(write_tflite(base, cut.model, setup.splits, folder,
                                       progress=not args.quiet))
    if setup.latency is not None:
        values.update(latency_report(cut.plans))
    if setup.params is not None:
        values.update(params_target=setup.params,
                      params_removed=round(1.0 - values["params_after"] /
                                           max(values["params_before"], 1), 6))


