"""Saving a model atomically, in the format its Keras generation ships.

This module owns :func:`save_model_atomic`: a tf-keras model as HDF5, a Keras 3 model in the
native ``.keras`` format, both without optimizer state, written through a temporary file in
the same folder and ``os.replace`` (:mod:`surgery.atomic`), never over the input model.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional, Union

from surgery.atomic import write_atomically
from surgery.engine.adapters import is_keras3


def save_model_atomic(model, path: Union[str, os.PathLike],
                      forbid: Optional[Union[str, os.PathLike]] = None) -> str:
    """Save ``model`` at ``path`` atomically (a temporary file in the same folder, then
    ``os.replace``): a tf-keras model as HDF5, a Keras 3 model in the native ``.keras``
    format (name ``path`` ``*.keras``). ``forbid`` is a path that must not be overwritten
    (the input model).

    Example::

        save_model_atomic(pruned, "runs/x/pruned.h5", forbid="baseline.h5")
    """
    path = os.fspath(path)
    if forbid is not None and os.path.exists(forbid) and os.path.exists(path) and \
            os.path.samefile(path, forbid):
        raise ValueError(f"refusing to overwrite the input model {forbid}")
    if forbid is not None and os.path.abspath(path) == os.path.abspath(os.fspath(forbid)):
        raise ValueError(f"refusing to overwrite the input model {forbid}")

    def write(tmp: str) -> None:
        if is_keras3(model):  # Keras 3 saves only to names ending in .keras
            staged = tmp + ".keras"
            try:
                _without_optimizer(model).save(staged)
                os.replace(staged, tmp)
            finally:
                if os.path.exists(staged):
                    os.remove(staged)
            return
        with warnings.catch_warnings():  # "HDF5 is legacy": .h5 is what this project ships
            warnings.simplefilter("ignore", UserWarning)
            model.save(tmp, save_format="h5", include_optimizer=False)
    return write_atomically(path, write)


def _without_optimizer(model):
    """A Keras 3 model as saved: a same-weights copy without the optimizer state that a
    ``.keras`` file would otherwise carry (the ``.h5`` files are saved without it too)."""
    if getattr(model, "optimizer", None) is None:
        return model
    copy = type(model).from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy
