"""Fine-tuning many channel plans of one model while tracing its training step once.

On a 2-core CPU, TensorFlow spends ~15 s building the training graph of a small
MobileNetV2 and ~1 s per epoch running it, so a benchmark that fine-tunes dozens of
differently-cut models would mostly measure graph building. :class:`MaskedFinetuner`
instead trains the *full-width* model with the plan's channels held at exact zeros (the
same zeros as :func:`surgery.zero_channels`, the equivalence oracle of the tests), which
is the same training as training the cut model: a zero channel gets zero gradient
downstream, Adam's updates are per parameter, and the masks are re-applied after every
batch. After training, :func:`surgery.apply` cuts the channels for real; the accuracy
reported is the cut model's, and the largest relative difference between the cut and
masked models' outputs is returned beside it so any broken equivalence shows.

Example::

    tuner = MaskedFinetuner(base, train, epochs=5, lr=3e-3, teacher=teacher)
    pruned, gap = tuner.run(plan, distill=True, x_check=x_test)
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

import surgery
from surgery import keras, tf
from surgery.finetune import Distiller, WarmupCosine, steps_per_epoch
from surgery.zeroing import max_relative_difference


class _ReapplyMasks(keras.callbacks.Callback):
    def __init__(self, apply):
        super().__init__()
        self._apply = apply

    def on_train_batch_end(self, batch, logs=None):
        self._apply()


class MaskedFinetuner:
    """Fine-tunes channel plans of ``base`` (not modified) on ``train`` for ``epochs`` with
    Adam + :class:`WarmupCosine` (``warmup_epochs`` of warm-up), optionally distilling
    from ``teacher``; every run starts from ``base``'s weights and a fresh optimizer."""

    def __init__(self, base: keras.Model, train: tf.data.Dataset, *, epochs: int, lr: float,
                 warmup_epochs: float = 1.0, teacher: Optional[keras.Model] = None,
                 bn_momentum: Optional[float] = 0.9):
        from surgery.finetune import set_bn_momentum

        self.base, self.train, self.epochs = base, train, int(epochs)
        self.model = keras.models.clone_model(base)
        self.model.set_weights(base.get_weights())
        set_bn_momentum(self.model, bn_momentum)
        ones = keras.models.clone_model(base)
        ones.set_weights([np.ones_like(w) for w in base.get_weights()])
        self._ones = ones  # zero_channels(ones, plan) marks exactly the weights to hold at 0
        self._last = (None, None)
        self._masks = [tf.Variable(tf.ones_like(w), trainable=False) for w in self.model.weights]
        pairs = list(zip(self.model.weights, self._masks))

        @tf.function(autograph=False)
        def apply_masks():
            for var, mask in pairs:
                var.assign(var * mask)
        self._apply = apply_masks
        per_epoch = steps_per_epoch(train)
        schedule = dict(peak_lr=lr, total_steps=per_epoch * self.epochs,
                        warmup_steps=int(round(warmup_epochs * per_epoch)))
        self._plain = self.model
        self._plain.compile(keras.optimizers.Adam(WarmupCosine(**schedule)),
                            loss="categorical_crossentropy", metrics=["accuracy"])
        self._distiller = None
        if teacher is not None:
            self._distiller = Distiller(self.model, teacher)
            self._distiller.compile(keras.optimizers.Adam(WarmupCosine(**schedule)),
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
        for var in trainer.optimizer.variables:  # a fresh optimizer: step 0, no moments
            var.assign(tf.zeros_like(var))
        keras.utils.set_random_seed(seed)
        trainer.fit(self.train, epochs=self.epochs, verbose=0,
                    callbacks=[_ReapplyMasks(self._apply)])
        pruned = surgery.apply(self.model, plan)
        gap = 0.0
        if x_check is not None:
            gap = max_relative_difference(self.model(x_check, training=False),
                                          pruned(x_check, training=False))
        return pruned, gap
