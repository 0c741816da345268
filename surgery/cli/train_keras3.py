"""The Keras 3 half of ``train.py``: this module owns training a Keras 3 model (TensorFlow,
JAX or PyTorch backend, as ``KERAS_BACKEND`` names) with the sparsity penalties.

:func:`run` builds the ``--model`` with Keras 3 (or loads ``--restore``: a ``.keras`` file or
an ``.h5`` that Keras 3 wrote), attaches the penalties as Keras 3 regularisers
(:func:`surgery.pipeline.regularizers.add_penalties`, which picks the classes of
:mod:`surgery.pipeline.regularizers3`), trains with Keras 3's SGD (momentum 0.9) or Adam
under Keras's ``CosineDecay`` with warmup, or :class:`WarmupSchedule` for step and
piecewise decay (:mod:`surgery.pipeline.schedules`), and ``fit``, and writes ``NAME.keras`` atomically, without optimizer state.
Data come from :func:`surgery.data.load_splits` as ``tf.data`` datasets: the TensorFlow
backend fits them as they are; on JAX and PyTorch the training split is read batch by batch
through :class:`DatasetBatches` (a ``keras.utils.PyDataset``, so shuffling and augmentation
still change every epoch) and the validation and test splits become NumPy arrays. The
tfmot options are refused before this module runs (:func:`surgery.cli.train_args.refuse_keras2_only`). Keras 3
must be imported before this module; it logs and never prints.
"""
from __future__ import annotations

import argparse
import inspect
import logging
import os
import time
from typing import Dict, List, Optional, Tuple

import keras
from keras import ops

from surgery.cli.train_args import (PENALTIES, UsageError, run_folder, steps_per_epoch,
                                    tensorboard_available)
from surgery.errors import SurgeryError
from surgery.model_files import check_model_file
from surgery.pipeline import regularizers
from surgery.atomic import write_atomically
from surgery.progress import fit_verbose
from surgery.pipeline.schedules import WarmupScheduleBase

logger = logging.getLogger("train.py")

__all__ = ["WarmupSchedule", "DatasetBatches", "run", "save_keras_atomic"]


@keras.saving.register_keras_serializable(package="train")
class WarmupSchedule(WarmupScheduleBase, keras.optimizers.schedules.LearningRateSchedule):
    """Keras 3 learning rate with linear warmup, then step or piecewise decay (the formula
    of :class:`surgery.pipeline.schedules.WarmupSchedule`, on ``keras.ops``); ``make``
    gives Keras's ``CosineDecay`` for ``cosine``.

    Example:
        >>> s = WarmupSchedule(0.1, total_steps=100, warmup_steps=10, kind="step", step_size=30)
        >>> round(float(s(0)), 3), round(float(s(10)), 3), round(float(s(40)), 3)
        (0.01, 0.1, 0.01)
        >>> type(WarmupSchedule.make(0.1, 100, 10, "cosine")).__name__
        'CosineDecay'
    """

    _api = keras

    def __call__(self, step):
        return self.learning_rate(step, ops)


class DatasetBatches(keras.utils.PyDataset):
    """The batches of a ``tf.data`` dataset as NumPy ``(x, y)`` tuples, read in order, one
    pass of the dataset per epoch (a new pass starts at index 0, so a shuffling or
    augmenting dataset gives new batches every epoch). Fit it with ``shuffle=False``.

    Example::

        model.fit(DatasetBatches(splits.train, steps), shuffle=False, epochs=3)
    """

    def __init__(self, dataset, steps: int) -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        self._dataset = dataset
        self._steps = int(steps)
        self._iterator = None

    def __len__(self) -> int:
        return self._steps

    def __getitem__(self, index: int) -> Tuple[object, object]:
        if index == 0 or self._iterator is None:
            self._iterator = self._dataset.as_numpy_iterator()
        try:
            x, y = next(self._iterator)
        except StopIteration:  # fewer batches than counted: start the next pass
            self._iterator = self._dataset.as_numpy_iterator()
            x, y = next(self._iterator)
        return x, y


def _fit_data(splits, steps: int):
    """Training, validation and test data in the form the running backend fits."""
    if keras.backend.backend() == "tensorflow":
        return splits.train, splits.val, splits.test
    from surgery.data import as_arrays

    return DatasetBatches(splits.train, steps), as_arrays(splits.val), as_arrays(splits.test)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _restore(args: argparse.Namespace) -> keras.Model:
    try:  # refuse files whose loading would run code (Lambda bytecode) unless trusted
        check_model_file(args.restore, trust_code=args.trust_model_code)
    except SurgeryError as exc:
        raise UsageError(f"--restore: {str(exc).splitlines()[0]}") from None
    try:
        return keras.models.load_model(args.restore, compile=False,
                                       safe_mode=not args.trust_model_code)
    except Exception as exc:  # corrupt file, unknown custom layer, a Keras 2 .h5, …
        raise UsageError(f"--restore {args.restore!r}: cannot load it as a Keras 3 model "
                         f"({_first_line(exc)}); a .h5 written by Keras 2 loads in a Keras 2 "
                         "run (without --keras 3)") from None


def _build(name: str, input_shape, classes: int) -> keras.Model:
    """``models.get_model(name)`` built with Keras 3."""
    from surgery import models

    try:
        build = models.MODELS[name]
    except KeyError:
        raise UsageError(f"--model {name!r}: unknown model; known models: "
                         f"{', '.join(sorted(models.MODELS))}") from None
    try:
        if "keras_module" in inspect.signature(build).parameters:
            return build(input_shape=input_shape, classes=classes, keras_module=keras)
        # model functions that build with tf-keras only: the same graph, rebuilt by Keras 3
        return keras.Model.from_config(build(input_shape=input_shape,
                                             classes=classes).get_config())
    except ValueError as exc:
        raise UsageError(f"--model {name!r}: {_first_line(exc)}") from None


def _image_input(model: keras.Model) -> Tuple[tuple, int]:
    """``(input shape without batch, number of outputs)`` of a one-image-input model."""
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4 or len(model.outputs) != 1:
        raise UsageError(f"--restore: expected a single image input and one output, got "
                         f"inputs {[tuple(t.shape) for t in model.inputs]}")
    return tuple(model.inputs[0].shape[1:]), int(model.outputs[0].shape[-1])


def _load_inputs(args: argparse.Namespace):
    """Data splits and the (uncompiled) Keras 3 model; user errors become UsageError."""
    from surgery import data as data_generator

    restored = None
    image_size = (args.image_size, args.image_size) if args.image_size else None
    channels = None
    if args.restore:
        restored = _restore(args)
        shape, _ = _image_input(restored)
        channels = shape[-1]
        if image_size is None and shape[0] and shape[1]:
            image_size = (shape[0], shape[1])
    try:
        splits = data_generator.load_splits(args.data, image_size=image_size, channels=channels,
                                            batch_size=args.batch_size, augment=args.augment,
                                            seed=args.seed)
    except data_generator.DataError as exc:
        raise UsageError(f"--data {args.data!r}: {str(exc).splitlines()[0]}") from None
    if restored is None:
        return splits, _build(args.model, splits.input_shape, splits.num_classes)
    shape, outputs = _image_input(restored)
    if shape != tuple(splits.input_shape):
        raise UsageError(f"--restore: model input {shape} does not match the data "
                         f"{tuple(splits.input_shape)}")
    if outputs != splits.num_classes:
        raise UsageError(f"--restore: model has {outputs} outputs, the data has "
                         f"{splits.num_classes} classes")
    return splits, restored


def save_keras_atomic(model: keras.Model, path: str) -> str:
    """Write ``model`` to ``path`` (``*.keras``) atomically, without optimizer state.

    Example::

        save_keras_atomic(model, "runs/x/lenet5.keras")
    """
    if getattr(model, "optimizer", None) is not None:  # same weights, no optimizer state
        copy = model.__class__.from_config(model.get_config())
        copy.set_weights(model.get_weights())
        model = copy

    def write(tmp: str) -> None:
        staged = tmp + ".keras"  # Keras 3 saves only to names ending in .keras
        try:
            model.save(staged)
            os.replace(staged, tmp)
        finally:
            if os.path.exists(staged):
                os.remove(staged)
    return write_atomically(path, write)


def _optimizer(name: str, schedule) -> keras.optimizers.Optimizer:
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=schedule)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)


def run(args: argparse.Namespace) -> Dict[str, object]:
    """Train a Keras 3 model as ``args`` (already validated) say; return the summary dict
    (``path`` of the ``.keras`` file, ``test_accuracy``)."""
    keras.utils.set_random_seed(args.seed)
    splits, model = _load_inputs(args)
    init_lr = args.init_lr or (1e-3 if args.optimizer == "adam" else 0.05)
    steps = steps_per_epoch(splits.train)
    total = steps * args.epochs
    penalties = {name: getattr(args, name) for name in PENALTIES}
    if any(penalties.values()):
        model = regularizers.add_penalties(model, **penalties)

    name = args.model or os.path.splitext(os.path.basename(args.restore))[0] + "_continued"
    out = args.out or os.path.join("runs", f"train-{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    path = os.path.join(out, f"{name}.keras")
    if args.restore and os.path.abspath(path) == os.path.abspath(args.restore):
        raise UsageError(f"output {path!r} would overwrite the --restore input")
    resume = run_folder(args, out, path)

    step_size = steps * (args.lr_step_epochs or max(1, args.epochs // 3))
    lr = WarmupSchedule.make(init_lr, total, round(args.warmup_epochs * steps), args.lr_schedule,
                             step_size=step_size, decay=args.lr_decay)
    model.compile(optimizer=_optimizer(args.optimizer, lr), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    callbacks: List[keras.callbacks.Callback] = [
        keras.callbacks.CSVLogger(os.path.join(out, "train_log.csv"), append=resume.resuming)]
    callbacks += resume.callbacks(keras, "train", args.epochs)
    if tensorboard_available() and keras.backend.backend() == "tensorflow":
        callbacks.append(keras.callbacks.TensorBoard(log_dir=os.path.join(out, "logs")))
    train, val, test = _fit_data(splits, steps)
    val_data: Optional[object] = val if not isinstance(val, tuple) or len(val[0]) else None
    model.fit(train, validation_data=val_data, epochs=args.epochs, callbacks=callbacks,
              shuffle=False, verbose=fit_verbose())
    if isinstance(test, tuple):
        accuracy = model.evaluate(test[0], test[1], batch_size=args.batch_size, verbose=0)[1]
    else:
        accuracy = model.evaluate(test, verbose=0)[1]
    save_keras_atomic(model, path)
    resume.finish()
    return {"path": path, "test_accuracy": float(accuracy)}
