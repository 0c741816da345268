"""Calibration: plans checked against what they measure, and the public planner.

This package sits above :mod:`surgery.pruning` and calls ``plan`` and ``apply`` below it.
:mod:`~surgery.calibration.latency` is the measure-and-correct loop of a latency target
(plan, cut, time in the runtime, correct the cost tables' scale along the curve from plan
depth to measured cut, plan again), and :mod:`~surgery.calibration.curve` is that curve;
:mod:`~surgery.calibration.candidates` compares a budget's candidate allocations by their
agreement with the original after adaptive BN (:mod:`~surgery.calibration.batchnorm`,
which re-estimates BatchNormalization statistics);
:mod:`~surgery.calibration.planner` is :func:`surgery.plan`, which dispatches every budget.
"""
