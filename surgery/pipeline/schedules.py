"""Learning-rate schedules: this module owns the warmup + decay formulas, each written once
against an ``ops`` namespace: the training CLI's (linear warmup, then cosine, step or
piecewise decay) with its tf-keras (Keras 2) schedule class ``WarmupSchedule``, and the
pipeline's fine-tuning warmup + cosine (:class:`WarmupCosineBase`).

The Keras 3 class of the same name and config (``keras.ops``, any backend) lives in
:mod:`surgery.cli.train_keras3`; both hold their arguments and formula in
:class:`WarmupScheduleBase`. The tf-keras class is registered as ``train>WarmupSchedule``,
the name ``train.py`` has always saved it under.
"""
from __future__ import annotations

import math
from typing import Dict

from surgery._backend import keras
from surgery.pipeline.tf_ops import TF_OPS

__all__ = ["WarmupScheduleBase", "WarmupSchedule", "WarmupCosineBase"]


class WarmupCosineBase:
    """Arguments, config and formula of the pipeline's fine-tuning schedule: linear warmup
    from ~0 to ``peak_lr`` over ``warmup_steps``, then cosine decay to ``peak_lr *
    final_fraction`` at ``total_steps`` (constant after that). Shared by
    :class:`surgery.pipeline.finetune.WarmupCosine` (tf-keras, ``TF_OPS``) and
    :class:`surgery.pipeline.training3.WarmupCosine` (Keras 3, ``keras.ops``)."""

    def __init__(self, peak_lr: float, total_steps: int, warmup_steps: int = 0,
                 final_fraction: float = 0.0, name=None) -> None:
        super().__init__()
        if peak_lr <= 0:
            raise ValueError(f"peak_lr must be > 0, got {peak_lr}")
        if total_steps < 1 or warmup_steps < 0:
            raise ValueError(f"need total_steps >= 1 and warmup_steps >= 0, got "
                             f"{total_steps} and {warmup_steps}")
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(min(warmup_steps, total_steps))
        self.final_fraction = float(final_fraction)
        self.name = name

    def learning_rate(self, step, ops):
        """The learning rate at ``step`` (a scalar tensor), computed with ``ops``."""
        step = ops.cast(step, "float32")
        warmup_lr = self.peak_lr * (step + 1.0) / float(max(self.warmup_steps, 1))
        decay_len = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip((step - self.warmup_steps) / decay_len, 0.0, 1.0)
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        floor = self.final_fraction
        decay_lr = self.peak_lr * (floor + (1.0 - floor) * cosine)
        if self.warmup_steps == 0:
            return decay_lr
        return ops.where(step < self.warmup_steps, warmup_lr, decay_lr)

    def get_config(self) -> Dict[str, object]:
        return {"peak_lr": self.peak_lr, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "final_fraction": self.final_fraction,
                "name": self.name}


class WarmupScheduleBase:
    """Arguments, config and formula of the warmup schedule, shared by both Keras
    generations (see :class:`WarmupSchedule` for the formula)."""

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

    def learning_rate(self, step, ops):
        """The learning rate at ``step`` (a scalar tensor), computed with ``ops``."""
        step = ops.cast(step, "float32")
        init = self.init_lr
        warm = float(self.warmup_steps)
        span = float(max(1, self.total_steps - self.warmup_steps))
        t = ops.maximum(step - warm, 0.0)
        if self.kind == "cosine":
            decayed = init * 0.5 * (1.0 + ops.cos(math.pi * ops.minimum(t, span) / span))
        elif self.kind == "step":
            decayed = init * ops.power(self.decay, ops.floor(t / float(self.step_size)))
        else:
            exponent = (ops.cast(t >= 0.5 * span, "float32")
                        + ops.cast(t >= 0.75 * span, "float32"))
            decayed = init * ops.power(self.decay, exponent)
        if self.warmup_steps:
            warmup = init * (step + 1.0) / warm
            return ops.where(step < warm, warmup, decayed)
        return decayed

    def get_config(self) -> Dict[str, object]:
        return {"init_lr": self.init_lr, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "kind": self.kind,
                "step_size": self.step_size, "decay": self.decay}


@keras.utils.register_keras_serializable(package="train")
class WarmupSchedule(WarmupScheduleBase, keras.optimizers.schedules.LearningRateSchedule):
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

    def __call__(self, step):
        return self.learning_rate(step, TF_OPS)
