#!/usr/bin/env python
"""The training CLI: this module owns training any model of ``models/`` on any source of
``data_generator.py``, with the sparse-training options that prepare a model for surgery.

It builds (or ``--restore``s) a model, optionally adds sparsity penalties
(``surgery.pipeline.regularizers.add_penalties``), optionally wraps it for tfmot magnitude pruning
(constant / polynomial schedule or m:n structure, ``surgery.pipeline.sparsity``), trains it with SGD
or Adam under a cosine / step / piecewise learning-rate schedule with linear warmup, and
optionally prunes it unstructured after training and fine-tunes with the mask kept. Keras
progress bars show training; ``train_log.csv`` (CSVLogger) and TensorBoard logs (``logs/``)
go into the output folder, and the final ``.h5`` is written atomically (temporary file in
the same folder, then ``os.replace``); tfmot runs save the stripped model, which loads with
plain ``keras.models.load_model``. The last printed line gives the test accuracy (and the
sparsity when relevant). Errors a user can cause print one line to stderr and exit with
status 2, leaving no files.

Example::

    python train.py --model lenet5 --data digits --image-size 32 --epochs 5 --out runs/lenet
    python train.py --model lenet5 --data digits --image-size 32 --gl-filter 1e-3 --bn-l1 1e-4
    python train.py --model lenet5 --data digits --image-size 32 --prune-schedule polynomial \\
        --target-sparsity 0.8
    python train.py --model lenet5 --data digits --image-size 32 --unstructured-ratio 0.7 \\
        --finetune-epochs 2
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
import warnings
from typing import Dict, List, Optional, Sequence

PROG = "train.py"
PENALTIES = ("l1", "l2", "gl_filter", "gl_channel", "gl_all", "bn_l1", "angular_filter",
             "angular_channel")


# Started as a program (keras-surgery, python -m surgery.cli.*, or the checkout shims),
# TensorFlow was imported quietly and with the oneDNN guard: see surgery/_startup.py.

from surgery._backend import keras, tf  # noqa: E402  (first: selects the Keras 2 API)

from surgery.pipeline import regularizers as _regularizers  # noqa: E402  (registers the penalties)
from surgery.pipeline import sparsity as _sparsity  # noqa: E402
from surgery.pipeline.report import save_model_atomic  # noqa: E402
from surgery.data import DataError  # noqa: E402
from surgery.errors import SurgeryError  # noqa: E402
from surgery.model_files import check_model_file  # noqa: E402

logger = logging.getLogger(PROG)


class UsageError(Exception):
    """An error the user can fix; reported as one line and exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"{self.prog}: error: {message.splitlines()[0]}\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" unless the help text already states its default."""

    def _get_help_string(self, action):
        if "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


# --------------------------------------------------------------------------- schedule


@keras.utils.register_keras_serializable(package="train")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate with linear warmup, then cosine, step or piecewise decay.

    For ``step < warmup_steps``: ``init_lr · (step + 1) / warmup_steps``. After that, with
    ``t`` the step counted from the end of warmup and ``T = total_steps - warmup_steps``:
    ``cosine``: ``init_lr · ½(1 + cos(π·min(t, T)/T))``; ``step``: ``init_lr ·
    decay^floor(t / step_size)``; ``piecewise``: ``init_lr`` until 50 % of ``T``,
    ``init_lr·decay`` until 75 %, then ``init_lr·decay²``.

    Example:
        >>> s = WarmupSchedule(0.1, total_steps=100, warmup_steps=10, kind="cosine")
        >>> round(float(s(0)), 3), round(float(s(10)), 3), round(float(s(100)), 3)
        (0.01, 0.1, 0.0)
    """

    def __init__(self, init_lr: float, total_steps: int, warmup_steps: int = 0,
                 kind: str = "cosine", step_size: int = 1, decay: float = 0.1) -> None:
        if kind not in ("cosine", "step", "piecewise"):
            raise ValueError(f"unknown learning-rate schedule {kind!r}")
        self.init_lr = float(init_lr)
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.kind = kind
        self.step_size = max(1, int(step_size))
        self.decay = float(decay)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        init = tf.constant(self.init_lr, tf.float32)
        warm = float(self.warmup_steps)
        span = float(max(1, self.total_steps - self.warmup_steps))
        t = tf.maximum(step - warm, 0.0)
        if self.kind == "cosine":
            decayed = init * 0.5 * (1.0 + tf.cos(math.pi * tf.minimum(t, span) / span))
        elif self.kind == "step":
            decayed = init * tf.pow(self.decay, tf.floor(t / float(self.step_size)))
        else:
            exponent = (tf.cast(t >= 0.5 * span, tf.float32)
                        + tf.cast(t >= 0.75 * span, tf.float32))
            decayed = init * tf.pow(self.decay, exponent)
        if self.warmup_steps:
            warmup = init * (step + 1.0) / warm
            return tf.where(step < warm, warmup, decayed)
        return decayed

    def get_config(self) -> Dict[str, object]:
        return {"init_lr": self.init_lr, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "kind": self.kind,
                "step_size": self.step_size, "decay": self.decay}


# --------------------------------------------------------------------------- CLI


def _m_by_n(text: str):
    try:
        m, n = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected M,N such as 2,4, got {text!r}") from None
    if not 0 < m < n:
        raise argparse.ArgumentTypeError(f"need 0 < M < N, got {text!r}")
    return m, n


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``train.py`` (every flag documented with its default)."""
    p = _Parser(prog=PROG, formatter_class=_HelpFormatter,
                description="Train a model of models/ on a data source of data_generator.py, "
                            "optionally with sparsity penalties, tfmot pruning or "
                            "unstructured pruning + fine-tuning; writes an .h5.")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=None,
                   help="model name in models.MODELS (mobilenet_v2, mobilenet_v2_res, "
                        "mobilenet_v2_vgg, lenet5, vgg16, vgg19, resnet18); "
                        "required unless --restore (default: none)")
    g.add_argument("--restore", default=None, metavar="H5",
                   help="continue training the model in this .h5 instead of building "
                        "--model (fresh optimizer; default: none)")
    g.add_argument("--trust-model-code", action="store_true",
                   help="load --restore even if it holds code that loading runs (a Lambda "
                        "layer's bytecode); only for files you trust")
    g.add_argument("--data", default="digits",
                   help="data source: digits, mnist, cifar10, cifar100, an npy folder or an "
                        "image folder")
    g.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="resize images to PX x PX (default: the data's own size, or the "
                        "restored model's input size)")
    g.add_argument("--augment", action="store_true",
                   help="random pad-4 crop and horizontal flip on the training split")
    g.add_argument("--seed", type=int, default=0,
                   help="seed for the split, shuffling, initialisation and augmentation")
    g.add_argument("--out", default=None,
                   help="output folder (default: runs/train-MODEL-TIMESTAMP)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=10, help="training epochs")
    g.add_argument("--batch-size", type=int, default=32, help="batch size")
    g.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                   help="sgd (momentum 0.9) or adam")
    g.add_argument("--init-lr", type=float, default=None,
                   help="peak learning rate (default: 0.05 for sgd, 0.001 for adam)")
    g.add_argument("--lr-schedule", choices=("cosine", "step", "piecewise"), default="cosine",
                   help="decay after warmup: cosine to 0; step: x--lr-decay every "
                        "--lr-step-epochs; piecewise: x--lr-decay at 50%% and again at 75%% "
                        "of training")
    g.add_argument("--lr-step-epochs", type=int, default=None,
                   help="epochs between decays of the step schedule (default: epochs // 3, "
                        "at least 1)")
    g.add_argument("--lr-decay", type=float, default=0.1,
                   help="factor of the step and piecewise schedules")
    g.add_argument("--warmup-epochs", type=float, default=0.0,
                   help="linear learning-rate warmup length in epochs (0 = none)")

    g = p.add_argument_group("sparsity penalties (0 = off; surgery.pipeline.regularizers)")
    g.add_argument("--l1", type=float, default=0.0, help="L1 on conv/dense kernels")
    g.add_argument("--l2", type=float, default=0.0, help="L2 on conv/dense kernels")
    g.add_argument("--gl-filter", type=float, default=0.0,
                   help="group lasso over output filters")
    g.add_argument("--gl-channel", type=float, default=0.0,
                   help="group lasso over input channels")
    g.add_argument("--gl-all", type=float, default=0.0,
                   help="group lasso over filters and input channels")
    g.add_argument("--bn-l1", type=float, default=0.0,
                   help="L1 on BatchNormalization gamma (network slimming)")
    g.add_argument("--angular-filter", type=float, default=0.0,
                   help="strength x sum over filter pairs of cos^2")
    g.add_argument("--angular-channel", type=float, default=0.0,
                   help="strength x sum over input-channel pairs of cos^2")

    g = p.add_argument_group("tfmot magnitude pruning during training (surgery.pipeline.sparsity)")
    g.add_argument("--prune-schedule", choices=("constant", "polynomial"), default=None,
                   help="turn tfmot pruning on with this schedule (default: off; "
                        "--m-by-n alone implies constant)")
    g.add_argument("--target-sparsity", type=float, default=None,
                   help="final fraction of zeros in each pruned kernel (default: 0.5)")
    g.add_argument("--begin-step", type=int, default=None,
                   help="first pruning step in batches (default: 0)")
    g.add_argument("--end-step", type=int, default=None,
                   help="last pruning step (default: constant: never stops; polynomial: "
                        "the last training step)")
    g.add_argument("--prune-frequency", type=int, default=None,
                   help="steps between mask updates (default: 100, capped at a tenth of the "
                        "pruning span)")
    g.add_argument("--m-by-n", type=_m_by_n, default=None, metavar="M,N",
                   help="tfmot structured sparsity, e.g. 2,4 (M zeros in each N weights; "
                        "default: off)")

    g = p.add_argument_group("unstructured pruning after training (surgery.pipeline.sparsity)")
    g.add_argument("--unstructured-threshold", type=float, default=None, metavar="T",
                   help="zero kernel weights with |w| < T, then fine-tune (default: off)")
    g.add_argument("--unstructured-ratio", type=float, default=None, metavar="R",
                   help="zero the fraction R of smallest kernel weights, then fine-tune "
                        "(default: off)")
    g.add_argument("--unstructured-scope", choices=("layer", "global"), default=None,
                   help="ratio per layer or over all kernels pooled (default: layer)")
    g.add_argument("--finetune-epochs", type=int, default=None,
                   help="fine-tuning epochs after unstructured pruning, mask kept "
                        "(default: 1)")
    g.add_argument("--finetune-lr", type=float, default=None,
                   help="fine-tuning peak learning rate (default: --init-lr / 10)")
    return p


def _validate(args: argparse.Namespace) -> None:
    """Check flag values and combinations; raise UsageError with one line."""
    if (args.model is None) == (args.restore is None):
        raise UsageError("give exactly one of --model NAME or --restore FILE.h5")
    if args.restore is not None and not os.path.isfile(args.restore):
        raise UsageError(f"--restore: no such file {args.restore!r}")
    if args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.image_size is not None and args.image_size < 1:
        raise UsageError(f"--image-size must be >= 1, got {args.image_size}")
    if args.init_lr is not None and not args.init_lr > 0:
        raise UsageError(f"--init-lr must be > 0, got {args.init_lr}")
    if not 0 <= args.warmup_epochs <= args.epochs:
        raise UsageError(f"--warmup-epochs must be in [0, --epochs], got {args.warmup_epochs}")
    if args.lr_step_epochs is not None and args.lr_step_epochs < 1:
        raise UsageError(f"--lr-step-epochs must be >= 1, got {args.lr_step_epochs}")
    if not 0 < args.lr_decay <= 1:
        raise UsageError(f"--lr-decay must be in (0, 1], got {args.lr_decay}")
    for name in PENALTIES:
        value = getattr(args, name)
        if not value >= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {value}")

    tfmot_on = args.prune_schedule is not None or args.m_by_n is not None
    tfmot_flags = [f for f in ("target_sparsity", "begin_step", "end_step", "prune_frequency")
                   if getattr(args, f) is not None]
    if tfmot_flags and not tfmot_on:
        raise UsageError(f"--{tfmot_flags[0].replace('_', '-')} needs --prune-schedule "
                         "(or --m-by-n)")
    if args.target_sparsity is not None and not 0 <= args.target_sparsity < 1:
        raise UsageError(f"--target-sparsity must be in [0, 1), got {args.target_sparsity}")
    if args.begin_step is not None and args.begin_step < 0:
        raise UsageError(f"--begin-step must be >= 0, got {args.begin_step}")
    if args.prune_frequency is not None and args.prune_frequency < 1:
        raise UsageError(f"--prune-frequency must be >= 1, got {args.prune_frequency}")
    if args.end_step is not None and args.end_step <= (args.begin_step or 0):
        raise UsageError(f"--end-step ({args.end_step}) must be > --begin-step")

    unstructured_on = (args.unstructured_threshold is not None
                       or args.unstructured_ratio is not None)
    if args.unstructured_threshold is not None and args.unstructured_ratio is not None:
        raise UsageError("give only one of --unstructured-threshold and --unstructured-ratio")
    if not unstructured_on:
        for flag in ("unstructured_scope", "finetune_epochs", "finetune_lr"):
            if getattr(args, flag) is not None:
                raise UsageError(f"--{flag.replace('_', '-')} needs --unstructured-threshold "
                                 "or --unstructured-ratio")
    if args.unstructured_threshold is not None and not args.unstructured_threshold >= 0:
        raise UsageError("--unstructured-threshold must be >= 0")
    if args.unstructured_ratio is not None and not 0 <= args.unstructured_ratio <= 1:
        raise UsageError("--unstructured-ratio must be in [0, 1]")
    if args.finetune_epochs is not None and args.finetune_epochs < 1:
        raise UsageError(f"--finetune-epochs must be >= 1, got {args.finetune_epochs}")
    if args.finetune_lr is not None and not args.finetune_lr > 0:
        raise UsageError(f"--finetune-lr must be > 0, got {args.finetune_lr}")
    if tfmot_on and unstructured_on:
        raise UsageError("tfmot pruning (--prune-schedule/--m-by-n) and unstructured pruning "
                         "(--unstructured-*) cannot be combined in one run")


def _tensorboard_available() -> bool:
    """TensorBoard event writing needs the ``tensorboard`` package, which TensorFlow 2.21
    no longer installs with itself; without it the TensorBoard callbacks crash mid-fit."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def _optimizer(name: str, schedule) -> keras.optimizers.Optimizer:
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=schedule)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)


def _compile(model: keras.Model, optimizer) -> None:
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"])


def _steps(dataset) -> int:
    n = int(tf.data.experimental.cardinality(dataset))
    if n < 1:
        n = sum(1 for _ in dataset)
    return max(1, n)


def _load_inputs(args: argparse.Namespace):
    """Data splits and the (uncompiled) model; every user error becomes UsageError."""
    from surgery import data as data_generator
    from surgery import models

    restored = None
    image_size = (args.image_size, args.image_size) if args.image_size else None
    channels = None
    if args.restore:
        try:  # refuse files whose loading would run code (Lambda bytecode) unless trusted
            check_model_file(args.restore, trust_code=args.trust_model_code)
        except SurgeryError as exc:
            raise UsageError(f"--restore: {str(exc).splitlines()[0]}") from None
        try:
            restored = keras.models.load_model(args.restore, compile=False,
                                               safe_mode=not args.trust_model_code)
        except Exception as exc:  # corrupt file, unknown custom layer, not an .h5, …
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"--restore {args.restore!r}: cannot load ({first})") from None
        shape = restored.input_shape
        if isinstance(shape, list) or len(shape) != 4:
            raise UsageError(f"--restore: expected a single image input, got {shape}")
        channels = shape[-1]
        if image_size is None and shape[1] and shape[2]:
            image_size = (shape[1], shape[2])
    try:
        splits = data_generator.load_splits(args.data, image_size=image_size, channels=channels,
                                            batch_size=args.batch_size, augment=args.augment,
                                            seed=args.seed)
    except data_generator.DataError as exc:
        raise UsageError(f"--data {args.data!r}: {str(exc).splitlines()[0]}") from None
    if restored is not None:
        if tuple(restored.input_shape[1:]) != tuple(splits.input_shape):
            raise UsageError(f"--restore: model input {tuple(restored.input_shape[1:])} does "
                             f"not match the data {tuple(splits.input_shape)}")
        if restored.output_shape[-1] != splits.num_classes:
            raise UsageError(f"--restore: model has {restored.output_shape[-1]} outputs, the "
                             f"data has {splits.num_classes} classes")
        return splits, restored
    try:
        model = models.get_model(args.model, input_shape=splits.input_shape,
                                 classes=splits.num_classes)
    except ValueError as exc:
        raise UsageError(f"--model {args.model!r}: {str(exc).splitlines()[0]}") from None
    return splits, model


def run(args: argparse.Namespace) -> Dict[str, object]:
    """Train as ``args`` say; return a summary dict (path, test accuracy, sparsity)."""
    _validate(args)
    keras.utils.set_random_seed(args.seed)
    splits, model = _load_inputs(args)

    init_lr = args.init_lr or (1e-3 if args.optimizer == "adam" else 0.05)
    steps = _steps(splits.train)
    total = steps * args.epochs
    penalties = {name: getattr(args, name) for name in PENALTIES}
    if any(penalties.values()):
        model = _regularizers.add_penalties(model, **penalties)

    tfmot_on = args.prune_schedule is not None or args.m_by_n is not None
    tfmot_layers: List[str] = []
    if tfmot_on:
        schedule = args.prune_schedule or "constant"
        begin = args.begin_step or 0
        end = args.end_step
        if end is None and schedule == "polynomial":
            end = max(begin + 1, total - 1)
        span = (end if end is not None else total) - begin
        frequency = args.prune_frequency or max(1, min(100, span // 10))
        tfmot_layers = [layer.name for layer in _sparsity._iter_layers(model)
                        if _sparsity.tfmot_prunable(layer)]
        if not tfmot_layers:
            raise UsageError(f"model {model.name!r} has no layer tfmot can prune")
        model = _sparsity.prune_low_magnitude_model(
            model, schedule=schedule,
            target_sparsity=0.5 if args.target_sparsity is None else args.target_sparsity,
            begin_step=begin, end_step=end, frequency=frequency, m_by_n=args.m_by_n)

    name = args.model or os.path.splitext(os.path.basename(args.restore))[0] + "_continued"
    out = args.out or os.path.join("runs", f"train-{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    path = os.path.join(out, f"{name}.h5")
    if args.restore and os.path.abspath(path) == os.path.abspath(args.restore):
        raise UsageError(f"output {path!r} would overwrite the --restore input")
    os.makedirs(out, exist_ok=True)
    log_dir = os.path.join(out, "logs")

    step_size = steps * (args.lr_step_epochs or max(1, args.epochs // 3))
    lr = WarmupSchedule(init_lr, total, round(args.warmup_epochs * steps), args.lr_schedule,
                        step_size=step_size, decay=args.lr_decay)
    _compile(model, _optimizer(args.optimizer, lr))
    tensorboard = _tensorboard_available()
    if not tensorboard:
        logger.warning("the tensorboard package is not installed: no TensorBoard logs "
                       "(pip install tensorboard)")
    callbacks: List[keras.callbacks.Callback] = [
        keras.callbacks.CSVLogger(os.path.join(out, "train_log.csv"))]
    if tfmot_on:
        callbacks += _sparsity.pruning_callbacks(log_dir if tensorboard else None)
    elif tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=log_dir))
    model.fit(splits.train, validation_data=splits.val, epochs=args.epochs,
              callbacks=callbacks, verbose=1)

    summary: Dict[str, object] = {"path": path}
    if tfmot_on:
        model = _sparsity.strip(model)
        _, per_layer = _sparsity.total_sparsity(model)
        kernels = _sparsity.prunable_kernels(model)
        sizes = {n: int(kernels[n].shape.num_elements()) for n in tfmot_layers}
        summary["sparsity"] = (sum(per_layer[n] * sizes[n] for n in tfmot_layers)
                               / max(1, sum(sizes.values())))
        _compile(model, _optimizer(args.optimizer, init_lr))

    unstructured_on = (args.unstructured_threshold is not None
                       or args.unstructured_ratio is not None)
    if unstructured_on:
        model, masks = _sparsity.prune_unstructured(
            model, threshold=args.unstructured_threshold, ratio=args.unstructured_ratio,
            scope=args.unstructured_scope or "layer")
        _compile(model, _optimizer(args.optimizer, init_lr))
        summary["acc_after_pruning"] = float(model.evaluate(splits.test, verbose=0)[1])
        epochs = args.finetune_epochs or 1
        ft_lr = WarmupSchedule(args.finetune_lr or init_lr / 10, steps * epochs, 0, "cosine")
        _compile(model, _optimizer(args.optimizer, ft_lr))
        model.fit(splits.train, validation_data=splits.val, initial_epoch=args.epochs,
                  epochs=args.epochs + epochs, verbose=1,
                  callbacks=[_sparsity.MaskCallback(masks),
                             keras.callbacks.CSVLogger(os.path.join(out, "train_log.csv"),
                                                       append=True)]
                  + ([keras.callbacks.TensorBoard(log_dir=log_dir)] if tensorboard else []))
        summary["sparsity"] = _sparsity.total_sparsity(model)[0]

    summary["test_accuracy"] = float(model.evaluate(splits.test, verbose=0)[1])
    save_model_atomic(model, path)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    0 on success, 2 for errors the user can fix (one line on stderr, no files written).

    Example:
        >>> main(["--model", "lenet5", "--data", "digits", "--image-size", "32",
        ...       "--epochs", "1", "--out", "/tmp/lenet"])  # doctest: +SKIP
        0
    """
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a parse error (2, already printed)
        return int(exc.code or 0)
    try:
        summary = run(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (SurgeryError, DataError) as exc:  # library and data errors: one line
        print(f"{PROG}: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    line = f"test accuracy {summary['test_accuracy']:.4f}"
    if "acc_after_pruning" in summary:
        line += f" (right after pruning {summary['acc_after_pruning']:.4f})"
    if "sparsity" in summary:
        line += f", sparsity {summary['sparsity']:.4f}"
    print(f"saved {summary['path']}")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
