"""Channel-importance criteria: how much each output channel of a layer is worth keeping.

This package owns the scoring step of the pipeline (between sparse training and planning):
a registry of *criteria*, functions with one signature
``criterion(model, layer_names, data=None, **options) -> {layer_name: scores}`` that give
one float per output channel of each requested *producer* layer (Conv1D/2D/3D,
Conv2DTranspose, SeparableConv2D, Dense, and DepthwiseConv2D whose output channels are
``in_channels * depth_multiplier``), HIGHER = MORE IMPORTANT. Weight-only criteria
(``l1``, ``l2``, ``bn_gamma``, ``fpgm``) read kernels; data-driven ones (``apoz``,
``activation``, ``taylor``, ``thinet``) run the model once over at most ``max_samples`` examples of
``data`` (an ``(x, y)`` tuple of arrays or a ``tf.data.Dataset`` of ``(x, y)`` batches),
collecting every requested layer in that single pass. It also owns
:func:`select_channels`, which turns a score vector into the indices to delete. It never
modifies the model and knows nothing about channel groups or surgery (``surgery.engine.groups``,
``surgery.plan`` and ``surgery.apply`` do). Every criterion works on tf-keras models and
on Keras 3 models with the TensorFlow, JAX or PyTorch backend: weights are read as NumPy
through the layer rules, the model is asked about through its graph adapter, and forward
passes and ``taylor``'s gradients run in ``_forward`` (one code path per backend). The
registry is in ``_registry``, graph and data helpers in ``_graph`` and ``_data``, and the
criteria in ``weights``, ``activations`` and ``thinet``; this ``__init__`` holds the public
API and registers them all on import.
"""
from __future__ import annotations

import logging  # noqa: F401  (kept importable from here, as from the old single module)
import math
from typing import Any, Callable, Iterator, Optional, Sequence, Union  # noqa: F401

import numpy as np

from surgery._backend import keras, tf  # noqa: F401
from surgery.pruning.criteria._data import _no_data_message
from surgery.engine.graph import resolve
from surgery.errors import SurgeryError
from surgery.pruning.criteria._graph import _n_out_channels, _resolve_layers
from surgery.pruning.criteria._registry import (  # noqa: F401
    CRITERIA, DEFAULT_BATCH_SIZE, DEFAULT_MAX_SAMPLES, Criterion, Data, get_criterion, logger,
    register_criterion,
)
# Importing the criterion modules registers the built-in criteria. ThiNet lives in
# ``_thinet`` so that ``surgery.pruning.criteria.thinet`` is unambiguously the criterion function.
from surgery.pruning.criteria.weights import bn_gamma, fpgm, l1, l2
from surgery.pruning.criteria.activations import activation, apoz, taylor
from surgery.pruning.criteria._thinet import thinet, thinet_greedy

__all__ = [
    "CRITERIA",
    "Criterion",
    "Data",
    "channel_scores",
    "get_criterion",
    "register_criterion",
    "select_channels",
    "thinet_greedy",
    "l1",
    "l2",
    "bn_gamma",
    "apoz",
    "activation",
    "taylor",
    "fpgm",
    "thinet",
]


def channel_scores(
    model: keras.Model,
    layer_names: Sequence[str],
    criterion: Union[str, Criterion] = "l1",
    data: Optional[Data] = None,
    **options: Any,
) -> dict[str, np.ndarray]:
    """Score the output channels of ``layer_names`` with ``criterion`` (a name or callable).

    Checks the layer names first, then that the criterion returned one finite float per
    output channel for every layer; ``options`` go to the criterion (e.g.
    ``max_samples=``). Returns ``{layer_name: float64 array}``, higher = keep.

    >>> import numpy as np
    >>> from surgery._backend import keras
    >>> from surgery.pruning.criteria import channel_scores
    >>> x = keras.Input((8, 8, 3)); h = keras.layers.Conv2D(4, 3, name="c")(x)
    >>> model = keras.Model(x, keras.layers.GlobalAveragePooling2D()(h))
    >>> channel_scores(model, ["c"], "l2")["c"].shape
    (4,)
    """
    graph = resolve(model, "channel_scores")
    names = list(layer_names)
    layers = _resolve_layers(graph, names)
    fn = get_criterion(criterion)
    if getattr(fn, "needs_data", False) and data is None:
        raise SurgeryError(_no_data_message(getattr(fn, "__name__", str(criterion))))
    result = fn(graph.model, names, data, **options)  # a criterion takes the Keras model
    if not isinstance(result, dict):
        raise ValueError(
            f"criterion {criterion!r} returned {type(result).__name__}, expected a dict "
            "{layer_name: scores}"
        )
    out: dict[str, np.ndarray] = {}
    for name, layer in zip(names, layers):
        if name not in result:
            raise ValueError(f"criterion {criterion!r} returned no scores for layer {name!r}")
        scores = np.asarray(result[name], dtype=np.float64).reshape(-1)
        expected = _n_out_channels(graph, layer)
        if scores.shape[0] != expected:
            raise ValueError(
                f"criterion {criterion!r} returned {scores.shape[0]} scores for layer "
                f"{name!r} ({type(layer).__name__}), which has {expected} output channels"
            )
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"criterion {criterion!r} returned non-finite scores for {name!r}")
        out[name] = scores
    return out


def select_channels(
    scores: np.ndarray,
    *,
    ratio: Optional[float] = None,
    threshold: Optional[float] = None,
    min_keep: int = 1,
) -> list[int]:
    """Indices of the channels to DELETE (sorted), given importance ``scores`` (higher = keep).

    Exactly one of ``ratio`` (delete the ``floor(ratio * n)`` lowest-scored channels) or
    ``threshold`` (delete every channel scoring strictly below it) must be given. Never
    deletes so many that fewer than ``min_keep`` channels remain: the lowest-scored ones go
    first. Ties are broken by channel index (lower index deleted first).

    >>> from surgery.pruning.criteria import select_channels
    >>> select_channels([0.3, 0.1, 0.9, 0.2], ratio=0.5)
    [1, 3]
    >>> select_channels([0.3, 0.1, 0.9, 0.2], threshold=1.0, min_keep=2)
    [1, 3]
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if (ratio is None) == (threshold is None):
        raise ValueError("select_channels needs exactly one of ratio= or threshold=")
    if np.isnan(s).any():
        raise ValueError("select_channels got NaN scores; fix the criterion that produced them")
    if int(min_keep) != min_keep or min_keep < 0:
        raise ValueError(f"min_keep must be a non-negative integer, got {min_keep!r}")
    n = s.shape[0]
    order = np.argsort(s, kind="stable")
    if ratio is not None:
        if not 0.0 <= float(ratio) <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {ratio!r}")
        n_delete = int(math.floor(float(ratio) * n + 1e-9))  # 0.29 * 100 is 28.999...
    else:
        n_delete = int(np.count_nonzero(s < float(threshold)))
    n_delete = max(0, min(n_delete, n - int(min_keep)))
    return sorted(int(i) for i in order[:n_delete])
