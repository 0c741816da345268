"""Learning-rate schedules of the training CLI: this module owns the warmup + decay formula
(linear warmup, then cosine, step or piecewise decay), written once against an ``ops``
namespace, and its tf-keras (Keras 2) schedule class ``WarmupSchedule``.

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

__all__ = ["WarmupScheduleBase", "WarmupSchedule"]


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
