"""Atomic writes: every file the project produces appears whole or not at all.

This module owns the one mechanism behind them: write to a temporary file next to the
target, then ``os.replace`` it into place, removing the temporary file on any error.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Callable


def write_atomically(path: str, write: Callable[[str], None]) -> str:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then move it there.

    Readers never see a half-written file; on error the temporary file is removed.

    Example::

        write_atomically("model.tflite", lambda tmp: open(tmp, "wb").write(data))
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes files private (0600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return path
