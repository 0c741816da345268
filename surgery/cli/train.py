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
status 2, leaving no files. The argument parser and the flag checks live in
:mod:`surgery.cli.train_args`.

In a Keras 3 process (``keras`` imported before ``surgery``) the same command trains a
Keras 3 model on the backend ``KERAS_BACKEND`` names, with the penalties as Keras 3
regularisers, and writes ``NAME.keras`` (:mod:`surgery.cli.train_keras3`); the tfmot and
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
import logging
import os
import sys
import time
from typing import Dict, List, Optional, Sequence


# Started as a program (keras-surgery, python -m surgery.cli.*, or the checkout shims),
# TensorFlow was imported quietly and with the oneDNN guard: see surgery/_startup.py.

from surgery._backend import keras, tf  # noqa: E402  (first: selects the Keras 2 API)

from surgery._backend import legacy_tf_keras  # noqa: E402
from surgery.cli.train_args import (  # noqa: E402,F401  (train.build_parser, train.UsageError)
    PENALTIES, PROG, UsageError, build_parser, refuse_keras2_only, run_folder, steps_per_epoch,
    tensorboard_available, validate)
from surgery.pipeline import regularizers as _regularizers  # noqa: E402  (registers the penalties)
from surgery.pipeline.schedules import WarmupSchedule  # noqa: E402,F401  (train.WarmupSchedule)
from surgery.pipeline import sparsity as _sparsity  # noqa: E402
from surgery.progress import fit_verbose  # noqa: E402
from surgery.export.saving import save_model_atomic  # noqa: E402
from surgery.data import DataError  # noqa: E402
from surgery.errors import SurgeryError  # noqa: E402
from surgery.model_files import check_model_file  # noqa: E402

logger = logging.getLogger(PROG)


def _optimizer(name: str, schedule) -> keras.optimizers.Optimizer:
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=schedule)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)


def _compile(model: keras.Model, optimizer) -> None:
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", metrics=["accuracy"])


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
    """Train as ``args`` say; return a summary dict (path, test accuracy, sparsity).

    In a Keras 3 process (``keras`` imported before ``surgery``, or the start-up chose
    Keras 3) the model is a Keras 3 model trained by :mod:`surgery.cli.train_keras3`.
    """
    from surgery.cli.usage import check_generation

    check_generation(args.restore, args.keras, 2 if legacy_tf_keras() else 3, "train.py")
    if not legacy_tf_keras():
        refuse_keras2_only(args)
        validate(args)
        from surgery.cli import train_keras3

        return train_keras3.run(args)
    validate(args)
    keras.utils.set_random_seed(args.seed)
    splits, model = _load_inputs(args)

    init_lr = args.init_lr or (1e-3 if args.optimizer == "adam" else 0.05)
    steps = steps_per_epoch(splits.train)
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
    resume = run_folder(args, out, path)
    log_dir = os.path.join(out, "logs")

    step_size = steps * (args.lr_step_epochs or max(1, args.epochs // 3))
    lr = WarmupSchedule.make(init_lr, total, round(args.warmup_epochs * steps), args.lr_schedule,
                             step_size=step_size, decay=args.lr_decay)
    _compile(model, _optimizer(args.optimizer, lr))
    tensorboard = tensorboard_available()
    if not tensorboard:
        logger.warning("the tensorboard package is not installed: no TensorBoard logs "
                       "(pip install tensorboard)")
    callbacks: List[keras.callbacks.Callback] = [
        keras.callbacks.CSVLogger(os.path.join(out, "train_log.csv"), append=resume.resuming)]
    callbacks += resume.callbacks(keras, "train", args.epochs)
    if tfmot_on:
        callbacks += _sparsity.pruning_callbacks(log_dir if tensorboard else None)
    elif tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=log_dir))
    model.fit(splits.train, validation_data=splits.val, epochs=args.epochs,
              callbacks=callbacks, verbose=fit_verbose())

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
        ft_lr = WarmupSchedule.make(args.finetune_lr or init_lr / 10, steps * epochs, 0, "cosine")
        _compile(model, _optimizer(args.optimizer, ft_lr))
        model.fit(splits.train, validation_data=splits.val, initial_epoch=args.epochs,
                  epochs=args.epochs + epochs, verbose=fit_verbose(),
                  callbacks=[_sparsity.MaskCallback(masks),
                             keras.callbacks.CSVLogger(os.path.join(out, "train_log.csv"),
                                                       append=True)]
                  + resume.callbacks(keras, "finetune", args.epochs + epochs)
                  + ([keras.callbacks.TensorBoard(log_dir=log_dir)] if tensorboard else []))
        summary["sparsity"] = _sparsity.total_sparsity(model)[0]

    summary["test_accuracy"] = float(model.evaluate(splits.test, verbose=0)[1])
    save_model_atomic(model, path)
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
