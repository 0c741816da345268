"""Data handling of the data-driven criteria (``apoz``, ``taylor``, ``thinet``).

It owns the "needs data" error message and check, and :func:`_reduce_to_channels`, which
flattens an activation to ``(positions, channels)``; every criterion makes a single bounded
pass over ``data`` with :func:`surgery.pruning.samples.iter_batches` (``_iter_batches``
here).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from surgery.errors import SurgeryError
from surgery.pruning.criteria._registry import Data
from surgery.pruning.samples import iter_batches as _iter_batches  # noqa: F401


def _no_data_message(name: str) -> str:
    return (
        f"criterion {name!r} is data-driven and needs data=: pass data= as an (x, y) tuple "
        "of numpy arrays or a tf.data.Dataset of (x, y) batches (a few hundred examples "
        "are enough)"
    )


def _require_data(name: str, data: Optional[Data]) -> None:
    if data is None:
        raise SurgeryError(_no_data_message(name))


def _reduce_to_channels(t: np.ndarray, axis: int) -> tuple[np.ndarray, int]:
    """Move the channel axis last and flatten the rest: ``(positions, channels)``."""
    t = np.moveaxis(np.asarray(t), axis, -1)
    return t.reshape(-1, t.shape[-1]), t.shape[-1]
