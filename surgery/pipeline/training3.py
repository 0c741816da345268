"""Fine-tuning on Keras 3 (TensorFlow, JAX or PyTorch backend), with Keras 3's own parts.

This module owns the Keras 3 half of the pipeline's training: :func:`finetune` (compile +
``fit`` with a Keras 3 ``Adam`` under Keras's ``CosineDecay`` with warmup, distilling with
``keras.distillation`` through :mod:`surgery.pipeline.distillation3` when given a teacher) and
:func:`evaluate_accuracy` (top-1 through ``predict``). Data is a ``tf.data.Dataset`` of
``(x, y_onehot)`` batches (TensorFlow backend) or an ``(x, y)`` tuple of NumPy arrays (any
backend; :func:`fit_data` turns one into what the running backend takes). Keras 3 must be
imported before this module; it logs and never prints. The Keras 2 counterpart is
:mod:`surgery.pipeline.finetune`.
"""
from __future__ import annotations

import logging
import math
from typing import Optional, Sequence, Union

import keras
import numpy as np
from keras import ops

from surgery.pipeline.distillation3 import compile_distiller, make_distiller
from surgery.progress import fit_verbose
from surgery.pipeline.schedules import register_legacy, warmup_cosine

logger = logging.getLogger(__name__)

Data = Union[tuple, "object"]  # (x, y) arrays, or a tf.data.Dataset on the TF backend

__all__ = ["finetune", "evaluate_accuracy", "fit_data", "set_bn_momentum"]

register_legacy(keras)  # .keras files saved under the old surgery>WarmupCosine load


def set_bn_momentum(model: keras.Model, momentum: Optional[float]) -> int:
    """Set ``momentum`` on every BatchNormalization layer (``None`` leaves them); returns
    how many were changed (short fine-tunes need ~0.9)."""
    if momentum is None:
        return 0
    count = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(momentum)
            count += 1
        elif isinstance(layer, keras.Model):
            count += set_bn_momentum(layer, momentum)
    return count


def _is_arrays(data) -> bool:
    return isinstance(data, (tuple, list)) and len(data) == 2


def fit_data(dataset, backend: Optional[str] = None):
    """``dataset`` (a ``tf.data.Dataset`` of ``(x, y)`` batches) as the running backend's
    ``fit`` takes it: the dataset itself on TensorFlow, ``(x, y)`` NumPy arrays on JAX and
    PyTorch (:func:`surgery.data.as_arrays`)."""
    if dataset is None or _is_arrays(dataset):
        return dataset
    if (backend or keras.backend.backend()) == "tensorflow":
        return dataset
    from surgery.data import as_arrays

    return as_arrays(dataset)


def _batches(data, batch_size: int) -> int:
    if _is_arrays(data):
        return max(1, math.ceil(len(data[0]) / batch_size))
    from surgery.pipeline.finetune import steps_per_epoch  # tf.data: TF backend only

    return steps_per_epoch(data)


def finetune(model: keras.Model, train, val=None, *, epochs: int, lr: float = 1e-3,
             warmup_epochs: float = 1.0, teacher: Optional[keras.Model] = None,
             temperature: float = 4.0, alpha: float = 0.5, verbose: Union[int, str] = "auto",
             steps: Optional[int] = None, batch_size: int = 32,
             callbacks: Sequence[keras.callbacks.Callback] = (), seed: int = 0,
             stage: str = "fine-tuning", strategy=None) -> keras.callbacks.History:
    """Train a Keras 3 ``model`` in place with ``keras.optimizers.Adam`` and
    Keras's ``CosineDecay`` with warmup for ``epochs`` epochs, distilling from ``teacher`` when given.
    ``train``/``val`` are ``(x, y)`` arrays (shuffled each epoch, ``batch_size``) or, on
    the TensorFlow backend, ``tf.data`` datasets; ``steps`` caps the batches per epoch
    (brief fine-tunes). ``strategy`` is accepted for the Keras 2 signature and must be None.

    Example::

        finetune(pruned, (x, y), (xv, yv), epochs=3, lr=1e-3, teacher=original)
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    per_epoch = _batches(train, batch_size)
    if steps is not None:
        per_epoch = max(1, min(per_epoch, int(steps)))
    schedule = warmup_cosine(lr, total_steps=max(1, per_epoch * int(epochs)),
                             warmup_steps=int(round(warmup_epochs * per_epoch)), api=keras)
    optimizer = keras.optimizers.Adam(schedule)
    if teacher is None:
        trainee = model
        trainee.compile(optimizer, loss="categorical_crossentropy", metrics=["accuracy"])
    else:
        trainee = make_distiller(model, teacher, temperature=temperature, alpha=alpha)
        compile_distiller(trainee, optimizer)
    logger.info("%s %s for %d epochs x %d steps (lr %g, warmup %g epochs%s, %s backend)",
                stage, model.name, epochs, per_epoch, lr, warmup_epochs,
                ", distilling" if teacher is not None else "", keras.backend.backend())
    if _is_arrays(train):
        x, y = train
        if steps is not None:  # a brief fine-tune: a random subset of `steps` batches
            pick = np.random.default_rng(seed).permutation(len(x))[:per_epoch * batch_size]
            x, y = x[pick], y[pick]
        return trainee.fit(x, y, batch_size=batch_size, epochs=int(epochs), shuffle=True,
                           validation_data=val, verbose=fit_verbose(verbose),
                           callbacks=list(callbacks))
    data = train.repeat() if steps is not None else train
    return trainee.fit(data, validation_data=val, epochs=int(epochs), shuffle=False,
                       steps_per_epoch=per_epoch if steps is not None else None,
                       verbose=fit_verbose(verbose), callbacks=list(callbacks))


def evaluate_accuracy(model: keras.Model, data, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` arrays or a dataset of ``(x, y)`` batches
    (one-hot or integer labels), through ``model.predict``, as a fraction in [0, 1].

    Example::

        acc = evaluate_accuracy(model, (x_test, y_test))
    """
    from surgery.pipeline.export import class_ids, data_arrays

    x, y = data_arrays(data)
    if len(x) == 0:
        raise ValueError("cannot measure accuracy on an empty dataset")
    from surgery.pipeline.distribution import padded_to_batches

    out = model.predict(padded_to_batches(x, batch_size), batch_size=batch_size, verbose=0)
    if isinstance(out, (list, tuple)):
        out = out[0]
    pred = np.argmax(ops.convert_to_numpy(out)[:len(x)], axis=-1).reshape(-1)
    return float(np.mean(pred == class_ids(y)))
