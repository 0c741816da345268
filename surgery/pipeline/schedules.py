"""Learning-rate schedules: this module owns how the pipeline and the training CLI build
their schedules, and how files saved under the old schedule names load.

Warmup + cosine decay is Keras's own ``optimizers.schedules.CosineDecay(...,
warmup_target=, warmup_steps=)`` in both generations (:func:`warmup_cosine`; pass
``api=keras`` for Keras 3). The training CLI's ``step`` and ``piecewise`` decays keep a
class of their own, defined once (:class:`WarmupScheduleBase`, its formula written against a
generation's ``ops``) and made into each generation's ``LearningRateSchedule`` by
:func:`warmup_schedule_class`, registered as ``train>WarmupSchedule``: Keras's
``ExponentialDecay(staircase=True)`` and ``PiecewiseConstantDecay`` have no warmup.
:class:`WarmupSchedule` is the tf-keras one; importing this module in a process that has
Keras 3 loaded registers the Keras 3 one too.
Files saved by earlier versions under ``surgery>WarmupCosine`` or with a ``cosine``
``train>WarmupSchedule`` load as the equivalent ``CosineDecay`` (:func:`register_legacy`).
The one difference from the old formula: Keras's warmup starts at 0, so during warmup the
rate is ``peak · step / warmup_steps`` where it was ``peak · (step + 1) / warmup_steps``
(lower by ``peak / warmup_steps``); from the end of warmup on the two agree.
"""
from __future__ import annotations

import functools
import sys
from types import ModuleType
from typing import Any, Dict, Optional

from surgery._backend import keras
from surgery.pipeline.generation import KerasGeneration, keras2, keras3

__all__ = ["warmup_cosine", "WarmupScheduleBase", "WarmupSchedule", "warmup_schedule_class",
           "register_legacy"]


def warmup_cosine(peak_lr: float, total_steps: int, warmup_steps: int = 0,
                  final_fraction: float = 0.0, name: Optional[str] = None, *,
                  api: Optional[ModuleType] = None) -> Any:
    """Keras's ``CosineDecay``: linear warmup from 0 to ``peak_lr`` over ``warmup_steps``,
    then cosine decay to ``peak_lr * final_fraction`` at ``total_steps`` (constant after
    that). ``api`` is the Keras module (tf-keras by default; ``keras`` for Keras 3).

    Example:
        >>> s = warmup_cosine(1e-3, total_steps=100, warmup_steps=10)
        >>> type(s).__name__, [round(float(s(i)), 6) for i in (5, 10, 100)]
        ('CosineDecay', [0.0005, 0.001, 0.0])
    """
    if peak_lr <= 0:
        raise ValueError(f"peak_lr must be > 0, got {peak_lr}")
    if total_steps < 1 or warmup_steps < 0:
        raise ValueError(f"need total_steps >= 1 and warmup_steps >= 0, got "
                         f"{total_steps} and {warmup_steps}")
    warm = int(min(warmup_steps, total_steps))
    extra = {} if name is None else {"name": name}
    return (api or keras).optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warm else float(peak_lr),
        decay_steps=max(int(total_steps) - warm, 1), alpha=float(final_fraction),
        warmup_target=float(peak_lr) if warm else None, warmup_steps=warm, **extra)


class WarmupScheduleBase:
    """Learning rate with linear warmup, then step or piecewise decay: the arguments, config
    and formula of the training CLI's ``step`` and ``piecewise`` schedules, shared by both
    Keras generations (:func:`warmup_schedule_class`). :meth:`make` (and ``from_config``)
    give Keras's ``CosineDecay`` for ``kind="cosine"``.

    For ``step < warmup_steps``: ``init_lr · (step + 1) / warmup_steps``. After that, with
    ``t`` the step counted from the end of warmup and ``T = total_steps - warmup_steps``:
    ``step``: ``init_lr · decay^floor(t / step_size)``; ``piecewise``: ``init_lr`` until
    50 % of ``T``, ``init_lr·decay`` until 75 %, then ``init_lr·decay²``.

    Example:
        >>> s = WarmupSchedule(0.1, total_steps=100, warmup_steps=10, kind="step",
        ...                    step_size=30)
        >>> round(float(s(0)), 3), round(float(s(10)), 3), round(float(s(40)), 3)
        (0.01, 0.1, 0.01)
        >>> type(WarmupSchedule.make(0.1, 100, 10, "cosine")).__name__
        'CosineDecay'
    """

    _api: ModuleType = keras
    _ops: Any = None

    def __init__(self, init_lr: float, total_steps: int, warmup_steps: int = 0,
                 kind: str = "step", step_size: int = 1, decay: float = 0.1) -> None:
        if kind not in ("step", "piecewise"):
            raise ValueError(f"unknown learning-rate schedule {kind!r} (cosine: "
                             "WarmupSchedule.make, which gives Keras's CosineDecay)")
        self.init_lr = float(init_lr)
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.kind = kind
        self.step_size = max(1, int(step_size))
        self.decay = float(decay)

    @classmethod
    def make(cls, init_lr: float, total_steps: int, warmup_steps: int = 0,
             kind: str = "cosine", step_size: int = 1, decay: float = 0.1):
        """The schedule ``kind`` names: Keras's ``CosineDecay`` (with warmup) for
        ``cosine``, else this class."""
        if kind == "cosine":
            return warmup_cosine(init_lr, max(1, int(total_steps)), max(0, int(warmup_steps)),
                                 api=cls._api)
        return cls(init_lr, total_steps, warmup_steps, kind, step_size, decay)

    @classmethod
    def from_config(cls, config: Dict[str, object]):
        return cls.make(**config)

    def __call__(self, step):
        return self.learning_rate(step, self._ops)

    def learning_rate(self, step, ops):
        """The learning rate at ``step`` (a scalar tensor), computed with ``ops``."""
        step = ops.cast(step, "float32")
        init = self.init_lr
        warm = float(self.warmup_steps)
        span = float(max(1, self.total_steps - self.warmup_steps))
        t = ops.maximum(step - warm, 0.0)
        if self.kind == "step":
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


@functools.cache
def warmup_schedule_class(generation: KerasGeneration) -> type:
    """:class:`WarmupScheduleBase` as a ``LearningRateSchedule`` of ``generation``'s Keras,
    made once and registered as ``train>WarmupSchedule`` (with the old names of
    :func:`register_legacy`).

    Example:
        >>> warmup_schedule_class(keras2()) is WarmupSchedule
        True
    """
    api = generation.keras
    bases = (WarmupScheduleBase, api.optimizers.schedules.LearningRateSchedule)
    cls = type("WarmupSchedule", bases,
               {"__module__": __name__, "_api": api, "_ops": generation.ops,
                "__doc__": f"The warmup + step or piecewise schedule on Keras "
                           f"{generation.number} (see :class:`WarmupScheduleBase`)."})
    api.utils.register_keras_serializable(package="train")(cls)
    # tf-keras reads .h5 optimizer configs in its legacy scope, by bare class name.
    api.utils.get_custom_objects().setdefault("WarmupSchedule", cls)
    register_legacy(api)
    return cls


def register_legacy(api: ModuleType) -> None:
    """Register ``surgery>WarmupCosine`` (the pipeline's old fine-tuning schedule) with the
    Keras module ``api`` so that files saved under it load as :func:`warmup_cosine`."""

    class WarmupCosine(api.optimizers.schedules.LearningRateSchedule):
        """Old name, read only: ``from_config`` builds Keras's ``CosineDecay``."""

        @classmethod
        def from_config(cls, config):
            return warmup_cosine(api=api, **config)

    api.utils.register_keras_serializable(package="surgery")(WarmupCosine)
    # tf-keras reads .h5 optimizer configs in its legacy scope, by bare class name.
    api.utils.get_custom_objects().setdefault("WarmupCosine", WarmupCosine)


WarmupSchedule = warmup_schedule_class(keras2())

if "keras" in sys.modules:  # Keras 3 is loaded: register its schedules for .keras files too
    warmup_schedule_class(keras3())
