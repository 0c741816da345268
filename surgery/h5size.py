"""Like-for-like ``.h5`` sizes for reports: a model's size as the pruned model is saved.

A user's input ``.h5`` may carry optimizer state (often twice the weights, for Adam), while
``pruned.h5`` is saved without it; comparing the two files overstates the size cut. The
report therefore measures the input (baseline) model saved the same way as the pruned one
(:func:`surgery.report.save_model_atomic`: HDF5, no optimizer), in a temporary folder.

Example::

    before, before_gz = saved_h5_sizes(baseline_model)
"""
from __future__ import annotations

import os
import tempfile
from typing import Tuple

from surgery.export.saving import save_model_atomic
from surgery.pipeline.report import gzip_size


def saved_h5_sizes(model) -> Tuple[int, int]:
    """Bytes and gzipped bytes of ``model`` saved as ``pruned.h5`` is (HDF5, no optimizer
    state), measured in a temporary folder that is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="surgery-size-") as folder:
        path = save_model_atomic(model, os.path.join(folder, "model.h5"))
        return os.path.getsize(path), gzip_size(path)


__all__ = ["saved_h5_sizes"]
