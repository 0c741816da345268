"""Sensitivity analysis: how much accuracy each channel group, and the whole model, loses.

This module owns :func:`sensitivity`, after PaddleSlim's sensitivity tool: every prunable
channel group is pruned *alone* at a series of ratios (with :func:`surgery.plan` and
:func:`surgery.apply`, no fine-tuning) and the pruned model is evaluated, which shows which
groups can be cut hard and which must be spared (feed the result to ``per_layer=``).
:func:`accuracy_vs_flops` prunes the whole model at each ratio and records FLOPs,
parameters and accuracy, the trade-off curve. :func:`accuracy` is the default metric.
"""
from __future__ import annotations

import gc
import logging
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from surgery._backend import keras
from tqdm.auto import tqdm

from surgery.calibration.planner import plan as make_plan
from surgery.engine.graph import resolve
from surgery.progress import bars_wanted
from surgery.pruning.execution import apply as apply_plan
from surgery.pipeline.export import Data, class_ids, data_arrays
from surgery.engine.flops import count_flops
from surgery.engine.groups import channel_groups
from surgery.engine.flatten import flattened
from surgery.engine.zeroing import to_numpy

logger = logging.getLogger(__name__)

#: ``metric(model, x, y) -> float``: higher is better, e.g. :func:`accuracy`
Metric = Callable[[keras.Model, np.ndarray, np.ndarray], float]
EVAL_BATCH_SIZE = 256


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray,
             batch_size: int = EVAL_BATCH_SIZE) -> float:
    """Top-1 accuracy of ``model`` on arrays ``x`` and ``y`` (one-hot or integer labels).

    Runs the model eagerly in inference mode (no ``predict`` tracing per model, which
    matters when many pruned models are evaluated once each); any Keras generation and
    backend (TensorFlow, JAX or PyTorch outputs).

    Example::

        from surgery.pipeline.sensitivity import accuracy
        acc = accuracy(model, x_test, y_test)
    """
    if len(x) == 0:
        raise ValueError("accuracy: no examples to evaluate")
    predictions = []
    for start in range(0, len(x), batch_size):
        out = model(x[start:start + batch_size], training=False)
        if isinstance(out, (list, tuple)):
            out = out[0]
        predictions.append(np.argmax(to_numpy(out), axis=-1).reshape(-1))
    return float(np.mean(np.concatenate(predictions) == class_ids(y)))


def _ratios(ratios: Iterable[float]) -> list[float]:
    values = sorted({float(r) for r in ratios} | {0.0})
    bad = [r for r in values if not 0.0 <= r < 1.0]
    if bad:
        raise ValueError(f"ratios must be in [0, 1), got {bad}")
    return values


def _group_names(model: keras.Model, groups: Optional[Sequence[str]]) -> list[str]:
    found = [g for g in channel_groups(model) if g.producers]
    prunable = [g for g in found if not g.skipped]
    if groups is None:
        return [g.name for g in prunable]
    by_member = {p: g for g in found for p in g.producers}
    names = []
    for name in groups:
        group = by_member.get(name)
        if group is None:
            raise ValueError(
                f"sensitivity: {name!r} produces no channel group of the model; pass names "
                f"of layers with filters/units, e.g. {[g.name for g in prunable][:5]}")
        if group.skipped:
            raise ValueError(f"sensitivity: the group of {name!r} ({group.name}) cannot be "
                             f"pruned: {group.skipped}; leave it out of groups=")
        names.append(name)
    return names


def _progress(total: int, enabled: bool, desc: str):
    return tqdm(total=total, desc=desc, leave=False, disable=not bars_wanted(enabled))


def sensitivity(model: keras.Model, data: Data, ratios: Sequence[float] = (0.1, 0.3, 0.5, 0.7),
                *, criterion="l1", groups: Optional[Sequence[str]] = None,
                metric: Optional[Metric] = None, progress: bool = True
                ) -> dict[str, dict[float, float]]:
    """Accuracy after pruning each channel group alone, at each ratio (no fine-tuning).

    Args:
        model: the trained model; it is not modified.
        data: ``(x, y)`` arrays or a ``tf.data.Dataset`` of ``(x, y)`` batches (read once).
        ratios: fractions of a group's channels to delete; 0.0 (the unpruned baseline,
            evaluated once) is always included.
        criterion: channel importance, as for :func:`surgery.plan` (data-driven criteria
            get ``data``).
        groups: layer names whose groups to analyse (default: every group that can be
            pruned, named by its first producer).
        metric: ``metric(model, x, y) -> float``; default top-1 :func:`accuracy`.
        progress: a tqdm bar over groups × ratios.

    Returns:
        ``{group name: {ratio: metric}}``, ratios ascending, 0.0 first. A ratio that
        removes no channel of a small group gives the baseline.

    Example::

        result = surgery.sensitivity(model, (x_val, y_val), ratios=(0.2, 0.5, 0.8))
        fragile = [g for g, acc in result.items() if acc[0.0] - acc[0.5] > 0.05]
        smaller = surgery.prune(model, ratio=0.5, per_layer={g: 0.1 for g in fragile})
    """
    metric = metric or accuracy
    model = flattened(resolve(model, "sensitivity")).model
    x, y = data_arrays(data)
    values = _ratios(ratios)
    names = _group_names(model, groups)
    baseline = float(metric(model, x, y))
    logger.info("sensitivity: baseline %.4f, %d groups x %d ratios", baseline, len(names),
                len(values) - 1)
    result: dict[str, dict[float, float]] = {}
    with _progress(len(names) * (len(values) - 1), progress, "sensitivity") as bar:
        for name in names:
            scores = {0.0: baseline}
            for ratio in values[1:]:
                bar.set_postfix_str(f"{name} @ {ratio:g}", refresh=False)
                p = make_plan(model, ratio=0.0, per_layer={name: ratio}, criterion=criterion,
                              data=(x, y))
                if p.empty:
                    scores[ratio] = baseline
                else:
                    pruned = apply_plan(model, p)
                    scores[ratio] = float(metric(pruned, x, y))
                    del pruned
                logger.debug("sensitivity %s @ %g: %.4f", name, ratio, scores[ratio])
                bar.update(1)
            result[name] = scores
            gc.collect()
    return result


def accuracy_vs_flops(model: keras.Model, data: Data,
                      ratios: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 0.7), *,
                      metric: Optional[Metric] = None, progress: bool = True,
                      **plan_kwargs) -> list[dict]:
    """Prune the whole model at each ratio (no fine-tuning): FLOPs, parameters, accuracy.

    ``plan_kwargs`` go to :func:`surgery.plan` (``criterion``, ``policy``, ``round_to``,
    ``scope``, ...); data-driven criteria get ``data`` unless ``data=`` is given there.
    Ratio 0.0 is the model itself.

    Returns:
        one dict per ratio, ascending: ``ratio``, ``flops``, ``params``, ``accuracy``
        (the ``metric``'s value).

    Example::

        rows = surgery.accuracy_vs_flops(model, (x_val, y_val), ratios=(0, .25, .5))
        surgery.plots.plot_accuracy_vs_flops(rows, "tradeoff.png")
    """
    metric = metric or accuracy
    if "ratio" in plan_kwargs:
        raise ValueError("accuracy_vs_flops: pass ratios=, not ratio=")
    model = flattened(resolve(model, "accuracy_vs_flops")).model
    x, y = data_arrays(data)
    plan_kwargs.setdefault("data", (x, y))
    values = sorted({float(r) for r in ratios})
    if not values:
        raise ValueError("accuracy_vs_flops: ratios is empty")
    rows = []
    with _progress(len(values), progress, "accuracy vs FLOPs") as bar:
        for ratio in values:
            if not 0.0 <= ratio < 1.0:
                raise ValueError(f"ratios must be in [0, 1), got {ratio}")
            pruned = model if ratio == 0.0 else apply_plan(
                model, make_plan(model, ratio=ratio, **plan_kwargs))
            rows.append(dict(ratio=ratio, flops=int(count_flops(pruned)),
                             params=int(pruned.count_params()),
                             accuracy=float(metric(pruned, x, y))))
            logger.info("ratio %g: %d FLOPs, %d params, accuracy %.4f", ratio,
                        rows[-1]["flops"], rows[-1]["params"], rows[-1]["accuracy"])
            del pruned
            bar.update(1)
    return rows


__all__ = ["sensitivity", "accuracy_vs_flops", "accuracy"]
