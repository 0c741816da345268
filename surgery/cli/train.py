#!/usr/bin/env python
"""The training CLI: this module owns training any model of ``models/`` on any source of
``data_generator.py``, with the sparse-training options that prepare a model for surgery, in
either Keras generation.

It builds (or ``--restore``s) a model, optionally adds sparsity penalties
(``surgery.pipeline.regularizers.add_penalties``), optionally wraps it for tfmot magnitude pruning
(constant / polynomial schedule or m:n structure, ``surgery.pipeline.sparsity``), trains it with SGD
or Adam under a cosine / step / piecewise learning-rate schedule with linear warmup, and
optionally prunes it unstructured after training and fine-tunes with the mask kept. Keras
progress bars show training; ``train_log.csv`` (CSVLogger) and TensorBoard logs (``logs/``)
go into the output folder, and the final model is written atomically (temporary file in
the same folder, then ``os.replace``); tfmot runs save the stripped model, which loads with
plain ``keras.models.load_model``. The last printed line gives the test accuracy (and the
sparsity when relevant). Errors a user can cause print one line to stderr and exit with
status 2, leaving no files. The argument parser and the flag checks live in
:mod:`surgery.cli.train_args`.

The run is written once; what differs between the Keras generations comes from the process's
:class:`~surgery.cli._kit.Kit`. A Keras 2 process (the default) trains a tf-keras model and
writes ``NAME.h5``. In a Keras 3 process (``--keras 3``, a ``--restore`` file Keras 3 wrote,
or ``keras`` imported before ``surgery``) the same command trains a Keras 3 model on the
backend ``KERAS_BACKEND`` names (Keras 3 fits the ``tf.data`` splits on every backend), with
the penalties as Keras 3 regularisers, and writes ``NAME.keras``; the tfmot and
unstructured-pruning options need Keras 2 there and are refused with one line.

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
import dataclasses
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

# Started as a program (keras-surgery, python -m surgery.cli.*, or the checkout shims),
# TensorFlow was imported quietly and with the oneDNN guard: see surgery/_startup.py.
from surgery.cli._kit import Kit, kit_for_process
from surgery.cli.train_args import (  # noqa: F401  (train.build_parser, train.UsageError)
    PENALTIES, PROG, UsageError, build_parser, refuse_keras2_only, run_folder, steps_per_epoch,
    tensorboard_available, validate)
from surgery.cli.usage import check_generation
from surgery.data import DataError, Splits, load_splits
from surgery.errors import SurgeryError
from surgery.models import get_model
from surgery.pipeline import sparsity
from surgery.pipeline.generation import of_model
from surgery.progress import fit_verbose
from surgery.pipeline.regularizers import add_penalties  # registers the penalties too
from surgery.pipeline.resume import RunFolder
from surgery.pipeline.schedules import WarmupSchedule  # noqa: F401  (train.WarmupSchedule)
from surgery.pipeline.schedules import warmup_cosine, warmup_schedule_class

logger = logging.getLogger(PROG)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ----------------------------------------------------------------------------- inputs


def _restore(args: argparse.Namespace, kit: Kit):
    """The ``--restore`` model, loaded by this process's Keras (files whose loading would
    run code are refused unless trusted); a user error becomes one :class:`UsageError`."""
    try:
        return kit.load(args.restore, trust_code=args.trust_model_code)
    except UsageError as exc:
        raise UsageError(f"--restore: {exc}") from None


def _image_input(model) -> Tuple[tuple, int]:
    """``(input shape without batch, number of outputs)`` of a one-image-input model."""
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4 or len(model.outputs) != 1:
        raise UsageError(f"--restore: expected a single image input and one output, got "
                         f"inputs {[tuple(t.shape) for t in model.inputs]}")
    return tuple(model.inputs[0].shape[1:]), int(model.outputs[0].shape[-1])


def _load_data(args: argparse.Namespace, restored) -> Splits:
    """The splits of ``--data``, sized for the restored model when ``--image-size`` is not
    given."""
    image_size = (args.image_size, args.image_size) if args.image_size else None
    channels = None
    if restored is not None:
        shape, _ = _image_input(restored)
        channels = shape[-1]
        if image_size is None and shape[0] and shape[1]:
            image_size = (shape[0], shape[1])
    try:
        return load_splits(args.data, image_size=image_size, channels=channels,
                           batch_size=args.batch_size, augment=args.augment, seed=args.seed)
    except DataError as exc:
        raise UsageError(f"--data {args.data!r}: {_first_line(exc)}") from None


def _check_restored_fits(model, splits: Splits) -> None:
    shape, outputs = _image_input(model)
    if shape != tuple(splits.input_shape):
        raise UsageError(f"--restore: model input {shape} does not match the data "
                         f"{tuple(splits.input_shape)}")
    if outputs != splits.num_classes:
        raise UsageError(f"--restore: model has {outputs} outputs, the data has "
                         f"{splits.num_classes} classes")


def _load_inputs(args: argparse.Namespace, kit: Kit):
    """Data splits and the (uncompiled) model; every user error becomes UsageError."""
    restored = _restore(args, kit) if args.restore else None
    splits = _load_data(args, restored)
    if restored is not None:
        _check_restored_fits(restored, splits)
        return splits, restored
    try:
        model = get_model(args.model, input_shape=splits.input_shape,
                          classes=splits.num_classes, **kit.model_kwargs())
    except ValueError as exc:
        raise UsageError(f"--model {args.model!r}: {_first_line(exc)}") from None
    return splits, model


def _output_files(args: argparse.Namespace, kit: Kit) -> Tuple[str, str]:
    """The output folder and the path of the trained model in it."""
    name = args.model or os.path.splitext(os.path.basename(args.restore))[0] + "_continued"
    out = args.out or os.path.join("runs", f"train-{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    path = os.path.join(out, f"{name}.{kit.ext}")
    if args.restore and os.path.abspath(path) == os.path.abspath(args.restore):
        raise UsageError(f"output {path!r} would overwrite the --restore input")
    return out, path


# ----------------------------------------------------------------------------- training


def _tensorboard_wanted(kit: Kit) -> bool:
    """TensorBoard logs are written with ``tf.summary``: TensorFlow backend only, and only
    with the ``tensorboard`` package installed (said once when it is not)."""
    if kit.backend != "tensorflow":
        return False
    if tensorboard_available():
        return True
    logger.warning("the tensorboard package is not installed: no TensorBoard logs "
                   "(pip install tensorboard)")
    return False


@dataclasses.dataclass
class _Training:
    """What every stage of one run reads: the flags, the Kit, the data and the folder."""

    args: argparse.Namespace
    kit: Kit
    splits: Splits
    steps: int  # batches per epoch
    out: str
    resume: RunFolder
    tensorboard: bool

    @property
    def init_lr(self) -> float:
        """The peak learning rate: ``--init-lr``, else 0.001 for Adam and 0.05 for SGD."""
        return self.args.init_lr or (1e-3 if self.args.optimizer == "adam" else 0.05)

    @property
    def validation(self) -> Optional[Any]:
        return self.splits.val if self.splits.sizes.get("val", 1) else None

    def compile(self, model, learning_rate) -> None:
        """Compile ``model`` with ``--optimizer`` (SGD with momentum 0.9, or Adam)."""
        optimizers = self.kit.keras.optimizers
        optimizer = (optimizers.Adam(learning_rate=learning_rate)
                     if self.args.optimizer == "adam"
                     else optimizers.SGD(learning_rate=learning_rate, momentum=0.9))
        model.compile(optimizer=optimizer, loss="categorical_crossentropy",
                      metrics=["accuracy"])

    def callbacks(self, stage: str, epochs: int, *, append: bool,
                  tensorboard: bool = True) -> List[Any]:
        """The CSV log (``append`` to an earlier stage's), the resumable backup of
        ``stage``, and TensorBoard logs when wanted."""
        api = self.kit.keras
        found = [api.callbacks.CSVLogger(os.path.join(self.out, "train_log.csv"),
                                         append=append)]
        found += self.resume.callbacks(api, stage, epochs)
        if tensorboard and self.tensorboard:
            found.append(api.callbacks.TensorBoard(log_dir=self.log_dir))
        return found

    @property
    def log_dir(self) -> str:
        return os.path.join(self.out, "logs")

    def fit(self, model, callbacks: List[Any], epochs: int, initial_epoch: int = 0) -> None:
        model.fit(self.splits.train, validation_data=self.validation, epochs=epochs,
                  initial_epoch=initial_epoch, callbacks=callbacks, shuffle=False,
                  verbose=fit_verbose())

    def test_accuracy(self, model) -> float:
        return float(model.evaluate(self.splits.test, verbose=0)[1])


def _learning_rate(run: _Training, model):
    """The ``--lr-schedule`` with ``--warmup-epochs`` of warmup, in ``model``'s Keras."""
    args = run.args
    step_size = run.steps * (args.lr_step_epochs or max(1, args.epochs // 3))
    return warmup_schedule_class(of_model(model)).make(
        run.init_lr, run.steps * args.epochs, round(args.warmup_epochs * run.steps),
        args.lr_schedule, step_size=step_size, decay=args.lr_decay)


def _with_penalties(model, args: argparse.Namespace):
    penalties = {name: getattr(args, name) for name in PENALTIES}
    return add_penalties(model, **penalties) if any(penalties.values()) else model


# ----------------------------------------------------------------------------- sparsity


def _tfmot_on(args: argparse.Namespace) -> bool:
    return args.prune_schedule is not None or args.m_by_n is not None


def _wrapped_for_tfmot(model, args: argparse.Namespace, total_steps: int):
    """``model`` wrapped for tfmot pruning as the flags say, and the names of the layers
    tfmot prunes."""
    schedule = args.prune_schedule or "constant"
    begin = args.begin_step or 0
    end = args.end_step
    if end is None and schedule == "polynomial":
        end = max(begin + 1, total_steps - 1)
    span = (end if end is not None else total_steps) - begin
    frequency = args.prune_frequency or max(1, min(100, span // 10))
    layers = [layer.name for layer in sparsity._iter_layers(model)
              if sparsity.tfmot_prunable(layer)]
    if not layers:
        raise UsageError(f"model {model.name!r} has no layer tfmot can prune")
    wrapped = sparsity.prune_low_magnitude_model(
        model, schedule=schedule,
        target_sparsity=0.5 if args.target_sparsity is None else args.target_sparsity,
        begin_step=begin, end_step=end, frequency=frequency, m_by_n=args.m_by_n)
    return wrapped, layers


def _stripped(run: _Training, model, layers: Sequence[str], summary: Dict[str, object]):
    """The tfmot-trained ``model`` without its wrappers, recompiled; the zero fraction of
    the kernels tfmot pruned goes into ``summary``."""
    model = sparsity.strip(model)
    _, per_layer = sparsity.total_sparsity(model)
    kernels = sparsity.prunable_kernels(model)
    sizes = {n: int(kernels[n].shape.num_elements()) for n in layers}
    summary["sparsity"] = (sum(per_layer[n] * sizes[n] for n in layers)
                           / max(1, sum(sizes.values())))
    run.compile(model, run.init_lr)
    return model


def _pruned_unstructured(run: _Training, model, summary: Dict[str, object]):
    """``model`` with its smallest kernel weights zeroed as the flags say, then fine-tuned
    with the zeros kept; the accuracy right after pruning and the sparsity go into
    ``summary``."""
    args = run.args
    model, masks = sparsity.prune_unstructured(
        model, threshold=args.unstructured_threshold, ratio=args.unstructured_ratio,
        scope=args.unstructured_scope or "layer")
    run.compile(model, run.init_lr)
    summary["acc_after_pruning"] = run.test_accuracy(model)
    epochs = args.finetune_epochs or 1
    run.compile(model, warmup_cosine(args.finetune_lr or run.init_lr / 10,
                                     max(1, run.steps * epochs), api=run.kit.keras))
    total = args.epochs + epochs
    run.fit(model, [sparsity.MaskCallback(masks)]
            + run.callbacks("finetune", total, append=True),
            epochs=total, initial_epoch=args.epochs)
    summary["sparsity"] = sparsity.total_sparsity(model)[0]
    return model


# ----------------------------------------------------------------------------- the run


def _prepared(args: argparse.Namespace) -> Tuple[Kit, Splits, Any]:
    """The checks that refuse a run before anything is written, the seed, the inputs."""
    kit = kit_for_process()
    check_generation(args.restore, args.keras, kit.generation, "train.py")
    if kit.generation == 3:
        refuse_keras2_only(args)
    validate(args)
    kit.keras.utils.set_random_seed(args.seed)
    splits, model = _load_inputs(args, kit)
    return kit, splits, _with_penalties(model, args)


def run(args: argparse.Namespace) -> Dict[str, object]:
    """Train as ``args`` say; return a summary dict (path, test accuracy, sparsity).

    In a Keras 3 process (``keras`` imported before ``surgery``, or the start-up chose
    Keras 3) the model is a Keras 3 model, saved as ``.keras``.
    """
    kit, splits, model = _prepared(args)
    steps = steps_per_epoch(splits.train)
    tfmot_layers = None
    if _tfmot_on(args):
        model, tfmot_layers = _wrapped_for_tfmot(model, args, steps * args.epochs)
    out, path = _output_files(args, kit)
    resume = run_folder(args, out, path)
    training = _Training(args, kit, splits, steps, out, resume, _tensorboard_wanted(kit))

    training.compile(model, _learning_rate(training, model))
    callbacks = training.callbacks("train", args.epochs, append=resume.resuming,
                                   tensorboard=tfmot_layers is None)
    if tfmot_layers is not None:  # PruningSummaries is itself a TensorBoard callback
        callbacks += sparsity.pruning_callbacks(training.log_dir if training.tensorboard
                                                else None)
    training.fit(model, callbacks, epochs=args.epochs)

    summary: Dict[str, object] = {"path": path}
    if tfmot_layers is not None:
        model = _stripped(training, model, tfmot_layers, summary)
    if args.unstructured_threshold is not None or args.unstructured_ratio is not None:
        model = _pruned_unstructured(training, model, summary)
    summary["test_accuracy"] = training.test_accuracy(model)
    kit.save(model, path)
    resume.finish()
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    0 on success, 2 for errors the user can fix (one line on stderr, no files written).

    Example:
        >>> build_parser().parse_args(["--model", "lenet5"]).epochs
        10
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
        print(f"{PROG}: error: {_first_line(exc)}", file=sys.stderr)
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
