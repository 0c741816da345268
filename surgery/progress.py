"""How training shows progress: this module owns the choice of Keras's ``fit`` verbosity,
so that every ``fit`` of the pipeline and both CLIs reads well both in a terminal and in a
log file.

In a terminal Keras's live progress bar (``verbose=1``) is the useful view. Written to a
file (CI, ``nohup``, notebooks), the same bar becomes one carriage-return update per batch,
hundreds of kilobytes for a default run; there each epoch prints one line (``verbose=2``),
and tqdm's bars (evaluation loops, sensitivity analysis) are left out (:func:`bars_wanted`),
except in a notebook kernel, where tqdm draws a widget.

Example:
    >>> import io
    >>> fit_verbose(stream=io.StringIO()), fit_verbose(quiet=True)
    (2, 0)
    >>> bars_wanted(True, stream=io.StringIO()), bars_wanted(False)
    (False, False)
"""
from __future__ import annotations

import sys
from typing import Optional, TextIO, Union

__all__ = ["fit_verbose", "bars_wanted"]


def fit_verbose(verbose: Union[int, str] = "auto", *, quiet: bool = False,
                stream: Optional[TextIO] = None) -> int:
    """The ``verbose`` to give Keras's ``fit``: 0 when ``quiet``; an int ``verbose`` as
    given; for ``"auto"``, 1 (live bar) when ``stream`` (standard output) is a terminal,
    else 2 (one line per epoch)."""
    if quiet:
        return 0
    if verbose != "auto":
        return int(verbose)
    stream = sys.stdout if stream is None else stream
    try:
        return 1 if stream.isatty() else 2
    except (AttributeError, ValueError):  # a closed or stand-in stream
        return 2


def bars_wanted(enabled: bool, *, stream: Optional[TextIO] = None) -> bool:
    """Whether to show a tqdm bar: ``enabled`` and standard error (``stream``) is a terminal,
    or the process is a notebook kernel."""
    if not enabled:
        return False
    if _in_notebook_kernel():
        return True
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _in_notebook_kernel() -> bool:
    """Whether this process is a Jupyter kernel (tqdm then draws a widget); importing
    ``ipykernel`` (as nbclient's tests do) is not enough, an IPython shell must be running."""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)() if ipython else None
    return type(shell).__name__ == "ZMQInteractiveShell"
