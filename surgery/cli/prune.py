#!/usr/bin/env python
"""The end-to-end CLI: trained model -> channel plan -> surgery -> fine-tune -> artifacts.

This module owns the pipeline a user runs from the shell: load a trained ``.h5`` (or train
a baseline first), measure it, plan which channels to delete (by ``--ratio`` or by a FLOPs
target ``--flops-target``, planned by ``surgery.plan(flops_target=...)``), cut them with
:func:`surgery.apply`, fine-tune with LR warmup + cosine decay (optionally distilling from
the original, optionally under a ``tf.distribute`` strategy, optionally in ``--iterative``
rounds or ``--layerwise`` one group at a time), measure again, and write ``pruned.h5``,
``baseline.h5`` (when trained here), ``plan.json``, ``report.json`` and ``report.md`` into
the output folder, then print the report table. Errors the user can cause (missing or
corrupt ``.h5``, unknown model or data set, unreachable target) print one line to stderr
and exit with status 2, leaving no output files.

Example::

    python prune_and_finetune.py                       # the embedded MobileNetV2/digits demo
    python prune_and_finetune.py --model-path base.h5 --data digits --flops-target 0.6 \\
        --distill --finetune-epochs 10 --out runs/demo
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import logging
import os
import shutil
import sys
import time
from typing import Optional, Sequence



# Started as a program (keras-surgery, python -m surgery.cli.*, or the checkout shims),
# TensorFlow was imported quietly and with the oneDNN guard: see surgery/_startup.py.

import surgery  # noqa: E402,F401  (selects the Keras 2 API before TensorFlow is imported)
from surgery._backend import keras, tf  # noqa: E402
from surgery._startup import muted_stderr, quiet_tensorflow_logging  # noqa: E402
from surgery.pruning import criteria as _criteria  # noqa: E402
from surgery.pipeline.finetune import (STRATEGIES, clone_into, evaluate_accuracy, finetune,
                              make_strategy, set_bn_momentum)
from surgery.pipeline.artifacts import write_plots, write_tflite  # noqa: E402
from surgery.data import DataError  # noqa: E402
from surgery.h5size import saved_h5_sizes  # noqa: E402
from surgery.pipeline.report import (atomic_write, build_report, gzip_size, render_markdown,
                            save_model_atomic, write_report)

logger = logging.getLogger("prune_and_finetune")

PROG = "prune_and_finetune"


class UsageError(Exception):
    """A problem the user caused (bad file, name or target): one line, exit status 2."""


@dataclasses.dataclass
class RunResult:
    """What :func:`run` produced: the folder, artifact paths, report and pruned model."""

    out: str
    pruned_path: str
    plan_path: str
    report_path: str
    markdown_path: str
    report: dict
    model: keras.Model
    baseline_path: Optional[str] = None
    files: tuple = ()  # every file the run wrote, relative to ``out``


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; ``--help`` documents every flag and its default.

    Example:
        >>> build_parser().parse_args([]).flops_target
        0.5
    """
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Prune whole channels from a Keras CNN, fine-tune it, and report "
                    "parameters, FLOPs, .h5 size and accuracy before/after.")
    g = p.add_argument_group("model and data")
    g.add_argument("--model-path", default=None,
                   help="trained Keras .h5 to prune; when omitted, a --model baseline is "
                        "trained first for --baseline-epochs")
    g.add_argument("--trust-model-code", action="store_true",
                   help="load --model-path even if it holds code that loading runs (a "
                        "Lambda layer's bytecode); only for files you trust")
    g.add_argument("--model", default="mobilenet_v2",
                   help="architecture for the baseline (models.MODELS name)")
    g.add_argument("--alpha", type=float, default=0.35,
                   help="width multiplier of the baseline (models that take alpha)")
    g.add_argument("--data", default="digits",
                   help="data source: digits, mnist, cifar10, cifar100, or a folder")
    g.add_argument("--image-size", type=int, default=32,
                   help="square input size for a new baseline (a loaded model's input "
                        "size wins)")
    g.add_argument("--channels", type=int, default=1, choices=(1, 3),
                   help="input channels for a new baseline (a loaded model's wins)")
    g.add_argument("--batch-size", type=int, default=32, help="batch size")
    g.add_argument("--baseline-epochs", type=int, default=40,
                   help="epochs to train the baseline when no --model-path is given")
    g.add_argument("--baseline-lr", type=float, default=3e-3,
                   help="peak learning rate of baseline training")
    g.add_argument("--bn-momentum", type=float, default=0.9,
                   help="BatchNormalization momentum while training (short runs need "
                        "~0.9; 0 or less keeps the model's own)")
    g = p.add_argument_group("pruning")
    g.add_argument("--criterion", default="l1",
                   help="channel importance: " + ", ".join(sorted(_criteria.CRITERIA)))
    g.add_argument("--policy", default="aggregate",
                   choices=("aggregate", "intersection", "deepest", "depthwise"),
                   help="how members of a channel group agree")
    g.add_argument("--ratio", type=float, default=None,
                   help="fraction of channels to delete (instead of --flops-target)")
    g.add_argument("--flops-target", type=float, default=0.5,
                   help="fraction of FLOPs to remove, within 2 points where the model's "
                        "channels allow (ignored when --ratio is given)")
    g.add_argument("--max-ratio", type=float, default=0.9,
                   help="largest uniform channel ratio the --flops-target search may use")
    g.add_argument("--scope", default="global", choices=("local", "global"),
                   help="rank channels within each group (local) or across groups (global)")
    g.add_argument("--round-to", type=int, default=1, help="kept widths are multiples of this")
    g.add_argument("--min-channels", type=int, default=2, help="never keep fewer channels")
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--finetune-epochs", type=int, default=30, help="fine-tuning epochs")
    g.add_argument("--warmup-epochs", type=float, default=1.0,
                   help="linear LR warmup epochs before cosine decay")
    g.add_argument("--lr", type=float, default=3e-3, help="peak fine-tuning learning rate")
    g.add_argument("--distill", action="store_true",
                   help="distil from the unpruned model (Hinton soft targets)")
    g.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    g.add_argument("--alpha-kd", "--kd-alpha", dest="kd_alpha", type=float, default=0.5,
                   help="weight of the soft-target loss (1 - it weighs the hard labels)")
    g.add_argument("--iterative", type=int, default=1, metavar="K",
                   help="reach the target in K prune/fine-tune rounds")
    g.add_argument("--layerwise", action="store_true",
                   help="ThiNet-style: prune one channel group at a time, fine-tune briefly "
                        "(--layerwise-steps batches), move on; then fine-tune")
    g.add_argument("--layerwise-steps", type=int, default=10,
                   help="batches of brief fine-tuning after each group in --layerwise")
    g = p.add_argument_group("run")
    g.add_argument("--strategy", default="default", choices=STRATEGIES,
                   help="tf.distribute strategy for training")
    g.add_argument("--seed", type=int, default=0, help="random seed (data split, init, order)")
    g.add_argument("--out", default=None, help="output folder (default runs/<timestamp>)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="write channels.png, sensitivity.png and accuracy_vs_flops.png "
                        "(sensitivity per group on the validation split)")
    g.add_argument("--tflite", action="store_true",
                   help="also export baseline/pruned .tflite (float32, dynamic int8, full "
                        "int8 calibrated on the training split) with accuracy and sizes")
    return p


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
    if not 0.0 < args.max_ratio < 1.0:
        raise UsageError(f"--max-ratio must be in (0, 1), got {args.max_ratio}")
    if args.criterion not in _criteria.CRITERIA:
        raise UsageError(f"unknown criterion {args.criterion!r}; known criteria: "
                         f"{', '.join(sorted(_criteria.CRITERIA))}")
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


def _load_model(path: str, trust_code: bool = False) -> keras.Model:
    try:  # refuse files whose loading would run code (Lambda bytecode) unless trusted
        surgery.check_model_file(path, trust_code=trust_code)
    except surgery.SurgeryError as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=not trust_code)
    except Exception as exc:  # noqa: BLE001  (h5py/keras raise many kinds for bad files)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot load {path} as a Keras .h5 model ({reason})") from None
    if not isinstance(model, keras.Model):
        raise UsageError(f"{path} does not hold a Keras model")
    return model


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
# planning
# --------------------------------------------------------------------------------------
def _cached_criterion(name: str):
    """The criterion ``name``, scoring each (model, layers) pair only once (ratio search)."""
    fn = _criteria.get_criterion(name)
    cache: dict = {}

    def cached(model, layer_names, data=None, **options):
        key = (id(model), tuple(layer_names))
        if key not in cache:
            cache[key] = (model, fn(model, layer_names, data, **options))
        return cache[key][1]

    cached.__name__ = name
    cached.needs_data = getattr(fn, "needs_data", False)
    return cached


def _plan_kwargs(args, criterion, data, scope=None) -> dict:
    return dict(criterion=criterion, policy=args.policy, round_to=args.round_to,
                min_channels=args.min_channels, scope=scope or args.scope, data=data)


def plan_flops_target(model: keras.Model, removed_target: float, flops_ref: int, *,
                      max_ratio: float = 0.9, apply: bool = True, **plan_kwargs):
    """A plan removing ``removed_target`` of ``flops_ref`` FLOPs (``flops_ref`` may be an
    earlier, larger model's count: iterative rounds), by ``surgery.plan(flops_target=)``;
    returns ``(ratio, plan, pruned_model)`` (the model is ``None`` without ``apply``), where
    ``ratio`` is the uniform plan ratio nearest the target (``--layerwise`` uses it). Raises
    :class:`UsageError` when even ``max_ratio`` falls short of the target by more than 2
    points; a plan that misses only because the channels are coarse is logged as a warning
    by :mod:`surgery.pruning.budget` and returned.

    Example::

        ratio, p, smaller = plan_flops_target(model, 0.5, surgery.count_flops(model),
                                              criterion="l1", scope="global")
    """
    from surgery.pruning.budget import DEFAULT_TOLERANCE, plan_for_flops

    flops_now = surgery.count_flops(model)
    relative = 1.0 - (1.0 - removed_target) * flops_ref / flops_now
    if relative <= 0:  # already there (an earlier round overshot)
        p = surgery.plan(model, ratio=0.0, **plan_kwargs)
        return 0.0, p, model if apply else None
    p = plan_for_flops(model, min(relative, 0.999), plan_fn=surgery.plan,
                       max_ratio=max_ratio, **plan_kwargs)
    removed = 1.0 - p.settings["flops_after"] / flops_ref
    if removed < removed_target - DEFAULT_TOLERANCE and not p.settings["flops_reachable"]:
        raise UsageError(f"FLOPs target unreachable: removing {removed_target:.0%} of FLOPs "
                         f"needs more than --max-ratio {max_ratio} (the nearest plan removes "
                         f"{removed:.1%})")
    if not apply:
        return p.settings["ratio"], p, None
    return p.settings["ratio"], p, (surgery.apply(model, p) if p.deletions else model)


def _prune_once(model, args, data, flops_ref, removed_target=None, ratio=None, scope=None,
                check_only=False):
    crit = _cached_criterion(args.criterion)
    kwargs = _plan_kwargs(args, crit, data, scope)
    if ratio is not None:
        p = surgery.plan(model, ratio=ratio, **kwargs)
        return ratio, p, (surgery.apply(model, p) if p.deletions else model)
    return plan_flops_target(model, removed_target, flops_ref, max_ratio=args.max_ratio,
                             apply=not check_only, **kwargs)


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


def _train_kwargs(args, strategy):
    return dict(strategy=strategy, verbose=0 if args.quiet else 1)


def _merge_plans(plans) -> dict:
    return {"rounds": [json.loads(p.to_json()) for p in plans]}


def run(args: argparse.Namespace) -> RunResult:
    """Run the whole pipeline for parsed ``args``; raises :class:`UsageError` for user
    errors before anything is written.

    Example::

        result = run(build_parser().parse_args(["--model", "lenet5", "--out", "runs/t"]))
        result.report["acc_finetuned"]
    """
    from surgery import models

    _validate(args)
    keras.utils.set_random_seed(args.seed)
    loaded = _load_model(args.model_path, args.trust_model_code) if args.model_path else None
    splits = _load_data(args, tuple(loaded.input_shape[1:]) if loaded is not None else None)
    if loaded is not None and loaded.output_shape[-1] != splits.num_classes:
        raise UsageError(f"{args.model_path} has {loaded.output_shape[-1]} outputs but data "
                         f"{args.data!r} has {splits.num_classes} classes")
    try:
        strategy = make_strategy(args.strategy)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    momentum = args.bn_momentum if args.bn_momentum > 0 else None
    out = args.out or _timestamp_folder()
    in_path = os.path.abspath(args.model_path) if args.model_path else None
    pruned_path = os.path.abspath(os.path.join(out, "pruned.h5"))
    if in_path is not None and pruned_path == in_path:
        raise UsageError(f"--out {out} would overwrite the input model {args.model_path}")

    if loaded is None:
        build = models.MODELS[args.model]
        kw = dict(input_shape=splits.input_shape, classes=splits.num_classes)
        if "alpha" in inspect.signature(build).parameters:
            kw["alpha"] = args.alpha
        with strategy.scope():
            base = build(**kw)
    else:
        base = clone_into(loaded, strategy)
    set_bn_momentum(base, momentum)
    flops_before = surgery.count_flops(base)
    target = None if args.ratio is not None else args.flops_target
    if target is not None:  # fail early (before any training) if the target is unreachable
        _prune_once(base, args, _criterion_data(args, splits), flops_before, target,
                    check_only=True)

    baseline_seconds = 0.0
    if loaded is None:
        t0 = time.perf_counter()
        finetune(base, splits.train, splits.val, epochs=args.baseline_epochs,
                 lr=args.baseline_lr, warmup_epochs=1, stage="training the baseline",
                 **_train_kwargs(args, strategy))
        baseline_seconds = time.perf_counter() - t0
    acc_baseline = evaluate_accuracy(base, splits.test)
    params_before = base.count_params()
    data = _criterion_data(args, splits)

    teacher = None
    if args.distill:  # a frozen copy, so that base (saved as baseline.h5) stays trainable
        with strategy.scope():
            teacher = keras.models.clone_model(base)
            teacher.set_weights(base.get_weights())

    prune_seconds = finetune_seconds = 0.0
    plans, acc_pruned = [], None
    current = base
    ft = dict(lr=args.lr, warmup_epochs=args.warmup_epochs, teacher=teacher,
              temperature=args.temperature, alpha=args.kd_alpha,
              **_train_kwargs(args, strategy))
    if args.layerwise:
        current, plans, acc_pruned, prune_seconds, finetune_seconds = _layerwise(
            base, args, splits, data, flops_before, target, strategy, ft, momentum)
    else:
        rounds = args.iterative
        epochs_left = args.finetune_epochs
        for k in range(1, rounds + 1):
            t0 = time.perf_counter()
            if target is not None:
                goal = 1.0 - (1.0 - target) ** (k / rounds) if rounds > 1 else target
                _, p, pruned = _prune_once(current, args, data, flops_before, goal)
            else:
                step_ratio = 1.0 - (1.0 - args.ratio) ** (1.0 / rounds)
                _, p, pruned = _prune_once(current, args, data, flops_before, ratio=step_ratio)
            pruned = clone_into(pruned, strategy)
            set_bn_momentum(pruned, momentum)
            prune_seconds += time.perf_counter() - t0
            plans.append(p)
            if acc_pruned is None:
                acc_pruned = evaluate_accuracy(pruned, splits.test)
            epochs = epochs_left if k == rounds else max(1, args.finetune_epochs // rounds)
            epochs_left -= epochs
            logger.info("round %d/%d: %d FLOPs left, fine-tuning %d epochs", k, rounds,
                        surgery.count_flops(pruned), epochs)
            t0 = time.perf_counter()
            finetune(pruned, splits.train, splits.val, epochs=max(1, epochs), **ft)
            finetune_seconds += time.perf_counter() - t0
            current = pruned
    acc_finetuned = evaluate_accuracy(current, splits.test)
    flops_after = surgery.count_flops(current)

    created = not os.path.exists(out)
    try:
        os.makedirs(out, exist_ok=True)
        baseline_path = None
        if loaded is None:
            baseline_path = save_model_atomic(base, os.path.join(out, "baseline.h5"))
        ref_path = in_path or baseline_path
        # "before" size like the pruned one: saved the same way, no optimizer state
        ref_sizes = (os.path.getsize(baseline_path), gzip_size(baseline_path)) \
            if baseline_path else saved_h5_sizes(base)
        save_model_atomic(current, pruned_path, forbid=in_path)
        plan_text = plans[0].to_json() if len(plans) == 1 else \
            json.dumps(_merge_plans(plans), indent=1, sort_keys=True)
        plan_path = atomic_write(os.path.join(out, "plan.json"), plan_text)
        values = dict(
            params_before=int(params_before), params_after=int(current.count_params()),
            flops_before=int(flops_before), flops_after=int(flops_after),
            acc_baseline=acc_baseline, acc_pruned=acc_pruned, acc_finetuned=acc_finetuned,
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
            layerwise=args.layerwise, distill=args.distill, strategy=args.strategy,
            replicas=int(strategy.num_replicas_in_sync), seed=args.seed,
            finetune_epochs=args.finetune_epochs, lr=args.lr,
            warmup_epochs=args.warmup_epochs, pruned_h5=pruned_path, baseline_h5=ref_path)
        if args.plots:
            from surgery.data import as_arrays
            values.update(write_plots(base, current, as_arrays(splits.val), out,
                                      criterion=args.criterion, progress=not args.quiet,
                                      chosen_flops=flops_after))
        if args.tflite:
            with muted_stderr() if args.quiet else contextlib.nullcontext():
                values.update(write_tflite(base, current, splits, out,
                                           progress=not args.quiet))
        report = build_report(values)
        json_path, md_path = write_report(out, report)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    written = [baseline_path, pruned_path, plan_path, json_path, md_path]
    written += [v for k, v in values.items() if k.endswith("_png")]
    written += [row["path"] for row in values.get("tflite", ())]
    files = tuple(os.path.relpath(p, out) for p in written if p)
    return RunResult(out, pruned_path, plan_path, json_path, md_path, report, current,
                     baseline_path, files)


def _plan_ratio(plans):
    """The uniform plan ratio of the run (one per round when they differ)."""
    ratios = [p.settings.get("ratio") for p in plans]
    ratios = [None if r is None else round(float(r), 6) for r in ratios]
    return ratios[0] if len(set(ratios)) == 1 else ratios


def _criterion_data(args, splits):
    fn = _criteria.get_criterion(args.criterion)
    if not getattr(fn, "needs_data", False):
        return None
    from surgery import data as dg

    return dg.as_arrays(splits.train, limit=256)


def _layerwise(base, args, splits, data, flops_ref, target, strategy, ft, momentum):
    """ThiNet's way: a uniform local ratio (the one meeting the target), applied one group
    at a time with a brief fine-tune after each, then the full fine-tune."""
    t0 = time.perf_counter()
    if target is not None:
        ratio, _, _ = _prune_once(base, args, data, flops_ref, target, scope="local")
    else:
        ratio = args.ratio
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
        if not p.deletions:
            continue
        current = clone_into(surgery.apply(current, p), strategy)
        set_bn_momentum(current, momentum)
        plans.append(p)
        prune_seconds += time.perf_counter() - t0
        logger.info("layerwise %d/%d: group %s, %d FLOPs left", i, len(groups), g.name,
                    surgery.count_flops(current))
        t0 = time.perf_counter()
        finetune(current, splits.train, None, epochs=1, steps=args.layerwise_steps, **brief)
        finetune_seconds += time.perf_counter() - t0
    if not plans:
        raise UsageError("--layerwise found no channel group to prune")
    acc_pruned = evaluate_accuracy(current, splits.test)
    t0 = time.perf_counter()
    finetune(current, splits.train, splits.val, epochs=args.finetune_epochs, **ft)
    finetune_seconds += time.perf_counter() - t0
    return current, plans, acc_pruned, prune_seconds, finetune_seconds


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv``, run the pipeline, print the report table; returns the exit status
    (0 ok, 2 for errors the user can fix, which print one line to stderr).

    Example::

        status = main(["--model", "lenet5", "--baseline-epochs", "1",
                       "--finetune-epochs", "1", "--out", "runs/tiny"])
    """
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    if args.quiet:  # TensorFlow's own warnings (retracing, ...) too
        quiet_tensorflow_logging()
    try:
        result = run(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (surgery.SurgeryError, DataError) as exc:  # library and data errors: one line
        print(f"{PROG}: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(render_markdown(result.report), end="")
    print(f"artifacts in {result.out}: {', '.join(result.files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
