"""Language models after a cut: this module owns measuring a causal LM on text
(:func:`perplexity`) and recovering a cut one by distillation from the original
(:func:`distill`), the third step of Minitron's recipe (score, cut, distil, quantize).

Data are ``(x, y)`` batches as :mod:`surgery.text_data` packs them: ``x`` the keras-hub
causal-LM inputs (``token_ids``, ``padding_mask``), ``y`` the next token of every position.
Perplexity is ``exp`` of the mean next-token negative log-likelihood over the positions the
padding mask keeps.

Distillation is Keras's own ``keras.distillation`` (through
:func:`surgery.pipeline.distillation.make_distiller`): the KL divergence between the
teacher's and the student's next-token distributions softened at ``temperature`` (× T²),
blended with the cross-entropy on the real next tokens by ``alpha`` (Minitron distils on
logits alone: ``alpha=1``, the default). AdamW with a linear warmup and a cosine decay.
With ``checkpoint_dir`` the run is cut into rounds of ``checkpoint_every`` steps and Keras's
``BackupAndRestore`` saves the student, the optimizer and the round after each: the same
call after a kill (SIGKILL included) goes on from the last round saved. Where several
devices are present (JAX, TensorFlow) it runs data-parallel through
:mod:`surgery.pipeline.distribution`.
"""
from __future__ import annotations

import logging
import math
import os
import time
from itertools import islice
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from surgery.errors import SurgeryError
from surgery.pipeline import distribution
from surgery.pipeline.distillation import checked_settings, make_distiller
from surgery.pipeline.generation import keras3
from surgery.progress import fit_verbose

logger = logging.getLogger(__name__)

__all__ = ["perplexity", "distill", "tokens_per_second"]


def _numpy_batches(data: Any) -> Iterable:
    return data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else iter(data)


def perplexity(model, data: Any, *, steps: Optional[int] = None) -> float:
    """``exp`` of ``model``'s mean next-token negative log-likelihood over ``data`` (``(x,
    y)`` batches, or a ``tf.data.Dataset`` of them; the first ``steps`` batches when given),
    counting the positions ``x["padding_mask"]`` keeps.

    Example::

        text = surgery.text_data.load_text("python_docs", tokenizer=lm.preprocessor.tokenizer)
        surgery.perplexity(lm, text.batches("test", 8, targets=True))
    """
    k = keras3().keras
    total, count = 0.0, 0.0
    for x, y in islice(_numpy_batches(data), steps):
        logits = model(x, training=False)
        nll = k.ops.convert_to_numpy(k.losses.sparse_categorical_crossentropy(
            y, k.ops.cast(logits, "float32"), from_logits=True))
        weight = np.asarray(x["padding_mask"], np.float64) if isinstance(x, dict) else 1.0
        total += float(np.sum(nll.astype(np.float64) * weight))
        count += float(np.sum(weight * np.ones_like(nll, np.float64)))
    if count == 0:
        raise SurgeryError("perplexity(data=...): no tokens to score; pass (x, y) batches "
                           "with x['padding_mask'] ones where tokens are")
    return math.exp(total / count)


def _median_seconds(run, repeats: int) -> float:
    run()  # the first call traces and compiles
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def tokens_per_second(model, x: dict, *, new_tokens: int = 32, repeats: int = 3) -> dict:
    """Measured throughput of a keras-hub causal LM on this machine: ``prefill`` (tokens of
    the batch ``x`` read in one forward pass, per second) and ``decode`` (tokens generated
    one at a time through the key/value cache after the first example's first half, per
    second; greedy), medians of ``repeats`` after a warm-up call. Decoding is timed through
    the function ``generate`` runs (compiled for the backend, as a user's ``generate``
    call is: ``generate_step`` called directly runs eagerly, ~100x slower on TensorFlow).
    It compiles ``model`` with a greedy sampler (``generate`` needs one): compile it again
    for training."""
    prefill = _median_seconds(lambda: model(x, training=False), repeats)
    ids = np.asarray(x["token_ids"])[:1]
    prompt = max(1, ids.shape[1] // 2)
    length = prompt + new_tokens
    tokens = np.zeros((1, length), "int32")
    tokens[0, :prompt] = ids[0, :prompt]
    mask = np.arange(length)[None, :] < prompt
    model.compile(sampler="greedy")
    generate = model.make_generate_function()
    decode = _median_seconds(lambda: generate(
        {"token_ids": tokens, "padding_mask": mask}, stop_token_ids=None), repeats)
    return {"prefill": np.asarray(x["token_ids"]).size / prefill,
            "decode": new_tokens / decode}


def _placed(model):
    """A copy of ``model`` made under the current distribution (its variables laid out on
    every device: JAX refuses a step that mixes them with single-device ones)."""
    copy = type(model).from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def _schedule(learning_rate: float, steps: int, warmup_steps: Optional[int]):
    k = keras3().keras
    warmup = max(1, steps // 10) if warmup_steps is None else int(warmup_steps)
    return k.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(1, steps - warmup), warmup_target=float(learning_rate),
        warmup_steps=warmup, alpha=0.1)


def _rounds(steps: int, checkpoint_every: Optional[int], checkpoint_dir) -> tuple:
    """``(epochs, steps per epoch)``: Keras's epochs are the rounds after which a backup
    is written; one round without ``checkpoint_dir``."""
    if steps < 1:
        raise SurgeryError(f"distill(steps={steps}): steps must be at least 1")
    if checkpoint_dir is None:
        return 1, steps
    every = checkpoint_every or max(1, steps // 10)
    if steps % every:
        raise SurgeryError(f"distill(steps={steps}, checkpoint_every={every}): steps must be "
                           "a multiple of checkpoint_every, so a resumed run ends where an "
                           "uninterrupted one does")
    return steps // every, every


def distill(student, teacher, data: Any, *, steps: int, temperature: float = 2.0,
            alpha: float = 1.0, learning_rate: float = 3e-4, warmup_steps: Optional[int] = None,
            weight_decay: float = 0.01, checkpoint_dir: Optional[str] = None,
            checkpoint_every: Optional[int] = None, validation_data: Any = None,
            validation_steps: Optional[int] = None, strategy: str = "default",
            callbacks: Sequence[Any] = (), verbose: Any = "auto") -> dict:
    """Train ``student`` (a cut causal LM, in place) for ``steps`` batches of ``data`` (a
    ``tf.data.Dataset`` of ``(x, y)`` that repeats) toward the frozen ``teacher`` (the model
    it was cut from); Keras ``callbacks`` run after the backup's. Returns Keras's history
    (``loss``, and ``val_perplexity`` when ``validation_data`` is given) with ``seconds``
    and the devices that shared each batch (``replicas``; ``strategy="dataparallel"`` on
    JAX, ``"mirrored"`` on TensorFlow).
    ``teacher`` is left as it was.

    Example::

        text = surgery.text_data.load_text("python_docs")
        history = surgery.distill(small, lm, text.dataset("train", 8).repeat(), steps=500,
                                  checkpoint_dir="runs/distill")
    """
    k = keras3().keras
    temperature, alpha = checked_settings(temperature, alpha)
    epochs, per_epoch = _rounds(steps, checkpoint_every, checkpoint_dir)
    previous = k.distribution.distribution()
    strategy_object = distribution.make_keras3_strategy(strategy, k.config.backend())
    trainable = teacher.trainable
    started = time.perf_counter()
    try:
        with distribution.scope(strategy_object):
            runner, frozen = (student, teacher) if strategy_object is None else \
                (_placed(student), _placed(teacher))
            distiller = make_distiller(runner, frozen, temperature=temperature, alpha=alpha)
            optimizer = k.optimizers.AdamW(_schedule(learning_rate, steps, warmup_steps),
                                           weight_decay=weight_decay)
            distiller.compile(optimizer=optimizer, loss=k.losses.SparseCategoricalCrossentropy(
                from_logits=True))
        backup = []
        if checkpoint_dir is not None:
            first = next(iter(_numpy_batches(data)))[0]
            distiller(first)  # BackupAndRestore restores into a built model only
            os.makedirs(checkpoint_dir, exist_ok=True)
            backup.append(k.callbacks.BackupAndRestore(checkpoint_dir))
        logger.info("distilling %s from %s: %d steps (%d rounds), T=%g, alpha=%g, lr %g",
                    student.name, teacher.name, steps, epochs, temperature, alpha,
                    learning_rate)
        history = distiller.fit(data, epochs=epochs, steps_per_epoch=per_epoch, shuffle=False,
                                callbacks=backup + list(callbacks),
                                verbose=fit_verbose(verbose)).history
        if runner is not student:
            student.set_weights(runner.get_weights())
    finally:
        teacher.trainable = trainable
        k.distribution.set_distribution(previous)
    result = {key: [float(v) for v in values] for key, values in history.items()}
    if validation_data is not None:
        result["val_perplexity"] = perplexity(student, validation_data, steps=validation_steps)
    result["seconds"] = time.perf_counter() - started
    result["replicas"] = distribution.replicas(strategy_object)
    return result
