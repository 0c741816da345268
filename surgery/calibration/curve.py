"""The latency curve of an architecture: from plan depth to measured cut, fitted and inverted.

This module owns :class:`LatencyCurve`, what the latency loop of
:mod:`surgery.calibration.latency` learns from its timing checks. The loop plans with the
cost tables' predicted savings multiplied by a *scale*; the allocation search spends
channels in one order whatever the scale, and stops where the scaled prediction meets the
target. So a plan is fixed by its *depth* (the tables' unscaled predicted cut: a plan for
target ``T`` at scale ``s`` has depth ``T / s``), and every check of an architecture,
whatever target it was made for, is a point on one rising curve from depth to measured cut.
To hit a target, plan at the depth where the curve reaches it. The points are kept per
architecture in the cost cache (:class:`surgery.cost.cache.TableCache`, ``curves``), with
the scale each target's plan kept (``scales``), so a repeated plan makes the same plan.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Tuple

#: the exponent ``k`` of the power law ``measured cut ~ depth ** k`` where two points are
#: too few or too close to fit it: the middle of the k of 0.7-2.2 measured on MobileNetV2
#: (ONNX Runtime, batch 32; the measured cut rises faster than the tables predict)
DEFAULT_EXPONENT = 1.5
#: a fitted exponent is clamped to this range, a little wider than the values measured,
#: so that two noisy points cannot make one step absurdly long or short
EXPONENT_RANGE = (0.5, 3.0)
#: two points fit an exponent only where their measured cuts differ by this factor; closer
#: cuts differ mostly by timing noise (2-3 points between two timings of one plan here)
MIN_FIT_SPREAD = 1.15
#: one extrapolation trusts the law over at most this factor of measured cut (the first
#: correction rule, scale times measured / predicted, was clamped the same way)
MAX_STEP = 3.0
#: a depth within this fraction of one already checked makes the same plan (the channel
#: steps are coarse): the step is doubled, up to ``STEP_PAST_TRIES`` times, to move past it
SAME_DEPTH = 0.01
STEP_PAST_TRIES = 3
#: the scale stays within this range, so noisy timings cannot run it away
SCALE_RANGE = (0.2, 5.0)
#: measured cuts at or below this are timing noise, not points of the curve
MIN_CUT = 0.005


def target_key(target: float) -> str:
    """How a target names its kept scale: ``target_key(0.4) == "0.400"``."""
    return f"{target:.3f}"


class LatencyCurve:
    """The timing checks of one architecture, as a curve from plan depth to measured cut,
    and the scale a plan for a target should use.

    ``points``: ``(depth, measured cut)`` of each check (cuts at or below :data:`MIN_CUT`
    and non-positive depths are left out); ``kept``: ``{target_key(target): scale}`` of the
    scale each target's plan kept. Timing noise bends the points: checks of one depth, and
    neighbours the noise put out of order, are pooled so that the curve rises
    (:meth:`pooled`). Between the pooled points on either side of a target the curve is
    interpolated as a power law (linear in log depth and log cut); beyond them it is
    extrapolated from the point nearest the target as ``cut ~ depth ** k``, with ``k``
    fitted to the two nearest points where their cuts differ enough
    (:data:`MIN_FIT_SPREAD`), else :data:`DEFAULT_EXPONENT`.

    >>> curve = LatencyCurve([(0.8, 0.3), (1.4, 0.7)])
    >>> round(curve.scale_for(0.5), 4)   # interpolated: depth 1.12 reaches 50 %
    0.446
    >>> round(LatencyCurve([(0.5, 0.25)]).scale_for(0.5), 4)   # extrapolated, k = 1.5
    0.63
    >>> curve.add(1.0, 0.55); curve.keep(0.5, 0.45)
    >>> curve.start_scale(0.5), curve.repeated(0.5), curve.repeated(0.3)
    (0.45, True, False)
    >>> LatencyCurve().scale_for(0.5) is None
    True
    """

    def __init__(self, points: Iterable[Tuple[float, float]] = (),
                 kept: Optional[Dict[str, float]] = None):
        self.points: List[Tuple[float, float]] = []
        for depth, measured in points:
            self.add(depth, measured)
        self.kept = dict(kept or {})

    def add(self, depth: float, measured: float) -> None:
        """Add a check: a plan of ``depth`` measured to cut ``measured``."""
        if depth > 0 and measured > MIN_CUT:
            self.points.append((float(depth), float(measured)))

    def keep(self, target: float, scale: float) -> None:
        """Remember that the plan for ``target`` kept ``scale``."""
        self.kept[target_key(target)] = float(scale)

    def repeated(self, target: float) -> bool:
        """Whether a plan for ``target`` was kept before (it will be made again)."""
        return target_key(target) in self.kept

    def start_scale(self, target: float) -> Optional[float]:
        """The scale a plan for ``target`` starts from: the one its last plan kept (a
        repeated plan makes the same plan), else :meth:`scale_for`."""
        return self.kept.get(target_key(target)) or self.scale_for(target)

    def scale_for(self, target: float) -> Optional[float]:
        """The scale whose plan the curve expects to cut ``target`` (``None`` with no
        points), within :data:`SCALE_RANGE`.

        >>> round(LatencyCurve([(1.0, 0.4), (1.2, 0.6)]).scale_for(0.7), 4)  # k = 2.22
        0.5443

        A depth already checked (within :data:`SAME_DEPTH`) is stepped past: here depth
        1.0027 (scale 0.5007) would make the plan of depth 1 again.

        >>> round(LatencyCurve([(1.0, 0.5)]).scale_for(0.502), 4)
        0.4967
        """
        points = [(math.log(d), math.log(m)) for d, m in self.pooled()]
        if not points:
            return None
        goal = math.log(target)
        below = [(m, d) for d, m in points if m < goal]
        above = [(m, d) for d, m in points if m > goal]
        if below and above:
            (m0, d0), (m1, d1) = max(below), min(above)
            depth = d0 + (goal - m0) / (m1 - m0) * (d1 - d0)
        else:
            depth = _extrapolated(points, goal)
        return min(max(target / math.exp(depth), SCALE_RANGE[0]), SCALE_RANGE[1])

    def pooled(self) -> List[Tuple[float, float]]:
        """The points as a rising curve, by depth: checks of one depth pooled (geometric
        means), then neighbours whose cuts fall where the curve rises
        (pool-adjacent-violators, in logs); cuts rounded to 4 places.

        >>> LatencyCurve([(1.0, 0.45), (2.0, 0.8), (1.0, 0.55)]).pooled()  # one depth, twice
        [(1.0, 0.4975), (2.0, 0.8)]
        >>> [round(m, 3) for _, m in LatencyCurve([(1.0, 0.5), (1.1, 0.45), (1.5, 0.7)]).pooled()]
        [0.474, 0.7]
        """
        logs: Dict[float, List[float]] = {}
        for depth, measured in self.points:
            logs.setdefault(depth, []).append(math.log(measured))
        blocks: List[List[float]] = []  # [sum of log depths, sum of log cuts, points]
        for depth in sorted(logs):
            n = len(logs[depth])
            blocks.append([math.log(depth) * n, sum(logs[depth]), n])
            while len(blocks) > 1 and \
                    blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]:
                last = blocks.pop()
                blocks[-1] = [a + b for a, b in zip(blocks[-1], last)]
        return [(math.exp(d / n), round(math.exp(m / n), 4)) for d, m, n in blocks]


def _extrapolated(points: List[Tuple[float, float]], goal: float) -> float:
    """The log depth where the power law through the point nearest ``goal`` (a log cut)
    reaches it; ``points`` are ``(log depth, log cut)``."""
    near, *others = sorted(points, key=lambda p: abs(p[1] - goal))
    k = DEFAULT_EXPONENT
    if others and abs(near[1] - others[0][1]) > math.log(MIN_FIT_SPREAD) and \
            near[0] != others[0][0]:
        k = (near[1] - others[0][1]) / (near[0] - others[0][0])
        k = min(max(k, EXPONENT_RANGE[0]), EXPONENT_RANGE[1])
    step = min(max(goal - near[1], -math.log(MAX_STEP)), math.log(MAX_STEP))
    for _ in range(STEP_PAST_TRIES):
        if all(abs(math.exp(d - near[0] - step / k) - 1) > SAME_DEPTH for d, _ in points):
            break
        step *= 2  # where the cut did not follow the depth, a repeated plan is wasted
    return near[0] + step / k
