"""What the stages of a ``prune`` run share.

This module owns three records: :class:`RunSetup` (the parsed arguments, the Keras
generation's :class:`~surgery.cli._kit.Kit`, the strategy, the loaded model, the data and
where the run writes), :class:`CutResult` (what the pruning stage produced: the cut model,
its plans, accuracies and seconds) and :class:`RunResult` (what a run returns).
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Optional

from surgery.cli._kit import Kit
from surgery.pipeline.resume import RunFolder


@dataclasses.dataclass
class RunResult:
    """What :func:`run` produced: the folder, artifact paths, report and pruned model."""

    out: str
    pruned_path: str
    plan_path: str
    report_path: str
    markdown_path: str
    report: dict
    model: Any
    baseline_path: Optional[str] = None
    files: tuple = ()  # every file the run wrote, relative to ``out``
    chief: bool = True  # False on a non-chief worker: it wrote nothing (paths: the chief's)
    worker: str = ""  # e.g. "worker 1 of 2" under --strategy multiworker


@dataclasses.dataclass
class RunSetup:
    """What every stage of a run reads: arguments, Keras generation, strategy, data and
    where things go."""

    args: argparse.Namespace
    kit: Kit
    strategy: Any
    loaded: Any  # the --model-path model, or None (a baseline is trained)
    splits: Any
    fit: tuple  # train, val, test in the form the Kit's fit takes
    momentum: Optional[float]
    out: str
    in_path: Optional[str]
    pruned_path: str
    resume: RunFolder

    @property
    def latency(self) -> Optional[float]:
        return getattr(self.args, "latency_target", None)

    @property
    def params(self) -> Optional[float]:
        return getattr(self.args, "params_target", None)

    @property
    def target(self) -> Optional[float]:
        """The FLOPs target, unless ``--ratio``, ``--latency-target`` or
        ``--params-target`` decides."""
        a = self.args
        other = a.ratio is not None or self.latency is not None or self.params is not None
        return None if other else a.flops_target


@dataclasses.dataclass
class CutResult:
    """What the pruning stage produced."""

    model: Any
    plans: list
    acc_pruned: Optional[float] = None
    acc_raw: Optional[float] = None  # right after the first cut, stale BN statistics
    acc_recalibrated: Optional[float] = None  # after adaptive BN
    prune_seconds: float = 0.0
    finetune_seconds: float = 0.0
    verify_diffs: list = dataclasses.field(default_factory=list)
