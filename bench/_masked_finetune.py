"""Fine-tuning many channel plans of one model while tracing its training step once.

On a 2-core CPU, TensorFlow spends 8-15 s building the training graph of a small
MobileNetV2 and 1-2 s per epoch running it, so a benchmark that fine-tunes dozens of
differently-cut models would mostly measure graph building. :class:`MaskedFinetuner`
instead trains the *full-width* model with the plan's channels held at exact zeros (the
same zeros as :func:`surgery.zero_channels`, the equivalence oracle of the tests), which
is the same training as training the cut model: the optimizer multiplies each gradient by
its keep-mask, and Adam's update of a weight whose gradients were all zero is exactly
zero, so the held weights never move (masking the weights after each batch from a
callback instead cost as much as the training step itself). After training,
:func:`surgery.apply` cuts the channels for real; the accuracy reported is the cut
model's, and the largest relative difference between the cut and masked models' outputs
is returned beside it so any broken equivalence shows.

Example::

    tuner = MaskedFinetuner(base, train, epochs=5, lr=3e-3, teacher=teacher)
    pruned, gap = tuner.run(plan, distill=True, x_check=x_test)
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

import surgery
from surgery import keras, tf
from surgery.pipeline.finetune import Distiller, steps_per_epoch
from surgery.pipeline.schedules import warmup_cosine
from surgery.engine.zeroing import max_relative_difference


class _MaskedAdam(keras.optimizers.legacy.Adam):
    """Adam that multiplies each variable's gradient by its keep-mask (if it has one).

    The legacy Adam updates each variable with one fused kernel; the current one with about
    fifteen small ops, which on a 2-core CPU doubles the time to trace the training step
    and adds a quarter to each step of these small models."""

    def __init__(self, masks, **kwargs):
        super().__init__(**kwargs)
        self._keep = masks  # {variable.ref(): tf.Variable of 0/1}

    def apply_gradients(self, grads_and_vars, *args, **kwargs):
        masked = [(g if g is None or v.ref() not in self._keep else g * self._keep[v.ref()], v)
                  for g, v in grads_and_vars]
        return super().apply_gradients(masked, *args, **kwargs)


class MaskedFinetuner:
    """Fine-tunes channel plans of ``base`` (not modified) on ``train`` for ``epochs`` with
    Adam + Keras's ``CosineDecay`` (``warmup_epochs`` of warm-up), optionally distilling
    from ``teacher``; every run starts from ``base``'s weights and a fresh optimizer."""

    def __init__(self, base: keras.Model, train: tf.data.Dataset, *, epochs: int, lr: float,
                 warmup_epochs: float = 1.0, teacher: Optional[keras.Model] = None,
                 bn_momentum: Optional[float] = 0.9):
        from surgery.pipeline.finetune import set_bn_momentum

        self.base, self.train, self.epochs = base, train, int(epochs)
        self.model = keras.models.clone_model(base)
        self.model.set_weights(base.get_weights())
        set_bn_momentum(self.model, bn_momentum)
        ones = keras.models.clone_model(base)
        ones.set_weights([np.ones_like(w) for w in base.get_weights()])
        self._ones = ones  # zero_channels(ones, plan) marks exactly the weights to hold at 0
        self._last = (None, None)
        self._masks = [tf.Variable(tf.ones_like(w), trainable=False) for w in self.model.weights]
        keep = {w.ref(): m for w, m in zip(self.model.weights, self._masks) if w.trainable}
        per_epoch = steps_per_epoch(train)
        schedule = dict(peak_lr=lr, total_steps=per_epoch * self.epochs,
                        warmup_steps=int(round(warmup_epochs * per_epoch)))
        self._plain = self.model
        self._plain.compile(_MaskedAdam(keep, learning_rate=warmup_cosine(**schedule)),
                            loss="categorical_crossentropy", metrics=["accuracy"])
        self._distiller = None
        if teacher is not None:
            self._distiller = Distiller(self.model, teacher)
            self._distiller.compile(_MaskedAdam(keep, learning_rate=warmup_cosine(**schedule)),
                                    metrics=["accuracy"])

    def masked(self, plan: surgery.PrunePlan) -> Tuple[List[np.ndarray], List[np.ndarray]]:
        """``base``'s weights with ``plan``'s channels zeroed, and the keep-masks (the
        last plan's are cached: runs with and without distillation share them)."""
        if self._last[0] is not plan:
            zeroed = surgery.zero_channels(self.base, plan.deletions).get_weights()
            masks = [w != 0 for w in
                     surgery.zero_channels(self._ones, plan.deletions).get_weights()]
            self._last = (plan, (zeroed, masks))
        return self._last[1]

    def run(self, plan: surgery.PrunePlan, *, distill: bool = False, seed: int = 0,
            x_check: Optional[np.ndarray] = None) -> Tuple[keras.Model, float]:
        """Fine-tune ``plan``'s cut of ``base``; return the cut model and the largest
        relative output difference between it and the masked model on ``x_check``."""
        trainer = self._distiller if distill else self._plain
        if trainer is None:
            raise ValueError("distill=True needs a teacher= when the tuner is made")
        weights, masks = self.masked(plan)
        self.model.set_weights(weights)
        for var, mask in zip(self._masks, masks):
            var.assign(mask.astype(var.dtype.as_numpy_dtype))
        for var in trainer.optimizer.variables():  # a fresh optimizer: step 0, no moments
            var.assign(tf.zeros_like(var))
        keras.utils.set_random_seed(seed)
        trainer.fit(self.train, epochs=self.epochs, verbose=0)
        pruned = surgery.apply(self.model, plan)
        gap = 0.0
        if x_check is not None:
            gap = max_relative_difference(self.model(x_check, training=False),
                                          pruned(x_check, training=False))
        return pruned, gap
