"""Process start-up for the command-line tools: the oneDNN guard and a quiet TensorFlow import.

This module imports neither TensorFlow nor anything of ``surgery``, so it can run before
TensorFlow is loaded (the top-level shims ``train.py`` / ``prune_and_finetune.py`` load it
by file path, before ``import surgery``; ``surgery._backend`` calls it when the process was
started as ``keras-surgery`` or ``python -m surgery.cli...``).

* :func:`avoid_onednn_crash` — TensorFlow 2.21's oneDNN CPU kernels crash the process
  (segfault, or heap corruption) when fitting some shapes on AVX-512 CPUs, e.g. a 1x1
  stride-2 ``Conv2D`` reading a 64x64x8 input, or the emotion CNN of the ``fer`` package.
  ``TF_ENABLE_ONEDNN_OPTS=0`` avoids both (``DNNL_MAX_CPU_ISA=AVX2`` avoids the first but
  not the second, measured). TensorFlow reads it once, when it is imported. The CLIs call
  this at start-up; Python users set ``KERAS_SURGERY_AVOID_ONEDNN_CRASH=1`` (then
  ``import surgery`` calls it before importing TensorFlow) or ``TF_ENABLE_ONEDNN_OPTS=0``.
* :func:`import_tensorflow_quietly` — TensorFlow writes CUDA-probing lines to file
  descriptor 2 on machines without a GPU, before any log level applies; the CLIs import it
  with that descriptor muted so a user error leaves exactly one line on stderr.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator, Optional

_log = logging.getLogger("surgery.startup")

#: The environment variables that decide which oneDNN kernels TensorFlow uses. When the user
#: set either, :func:`avoid_onednn_crash` leaves the choice to them.
ONEDNN_VARIABLES = ("DNNL_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS")


def cpu_has_avx512(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU advertises ``avx512f`` (Linux; False where ``cpuinfo`` is unreadable)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags") and "avx512f" in line.split():
                    return True
    except OSError:
        return False
    return False


def avoid_onednn_crash(environ=None) -> Optional[str]:
    """Turn TensorFlow's oneDNN CPU kernels off on AVX-512 CPUs, before TensorFlow loads.

    Sets ``TF_ENABLE_ONEDNN_OPTS=0`` when the CPU has AVX-512 and neither
    ``DNNL_MAX_CPU_ISA`` nor ``TF_ENABLE_ONEDNN_OPTS`` is set (a user's own choice wins);
    otherwise changes nothing. TensorFlow reads the variable when it is imported, so this
    only helps before ``import tensorflow``: afterwards it changes nothing, logs a warning
    and returns None. Costs some CPU training speed (see the README's measurement).
    Returns the value it set, or None when it left the environment alone.

    Example::

        KERAS_SURGERY_AVOID_ONEDNN_CRASH=1 python my_script.py   # import surgery calls it
    """
    env = os.environ if environ is None else environ
    if any(name in env for name in ONEDNN_VARIABLES):
        return None
    if not cpu_has_avx512():
        return None
    if "tensorflow" in sys.modules:
        _log.warning("TensorFlow is already imported, so its oneDNN kernels can no longer be "
                     "turned off; set TF_ENABLE_ONEDNN_OPTS=0 (or "
                     "KERAS_SURGERY_AVOID_ONEDNN_CRASH=1) before starting Python")
        return None
    env["TF_ENABLE_ONEDNN_OPTS"] = "0"
    return "0"


def requested_by_environment(environ=None) -> bool:
    """Whether ``KERAS_SURGERY_AVOID_ONEDNN_CRASH`` asks for :func:`avoid_onednn_crash`."""
    env = os.environ if environ is None else environ
    return env.get("KERAS_SURGERY_AVOID_ONEDNN_CRASH", "").lower() in ("1", "true", "yes")


def launched_as_cli() -> bool:
    """Whether this process is the ``keras-surgery`` console script or
    ``python -m surgery.cli...`` (checked before TensorFlow is imported)."""
    argv0 = os.path.basename(sys.argv[0]) if sys.argv else ""
    if argv0.startswith("keras-surgery"):
        return True
    orig = list(getattr(sys, "orig_argv", []))
    return any(a == "-m" and b.startswith("surgery.cli") for a, b in zip(orig, orig[1:]))


@contextlib.contextmanager
def muted_stderr() -> Iterator[None]:
    """Mute file descriptor 2 (what TensorFlow's and TFLite's C++ code writes to) inside
    the block; Python exceptions raised in it still show after it ends."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_tensorflow_logging() -> None:
    """Only errors from TensorFlow's Python logger (no retracing warnings), and no copy of
    them through the root logger's handler."""
    tf_logger = logging.getLogger("tensorflow")
    tf_logger.setLevel(logging.ERROR)
    tf_logger.propagate = False


def import_tensorflow_quietly() -> None:
    """Import ``surgery`` (so TensorFlow with the Keras 2 API) and initialise its devices with
    stderr muted; Python errors raised afterwards still show."""
    with muted_stderr():
        from surgery._backend import tf
        tf.config.list_physical_devices()


def muted_stderr_import(import_fn) -> None:
    """Call ``import_fn`` with file descriptor 2 muted (used by ``surgery._backend``)."""
    with muted_stderr():
        import_fn()


def cli_startup() -> None:
    """What every CLI does first: the oneDNN guard, then the quiet TensorFlow import."""
    avoid_onednn_crash()
    import_tensorflow_quietly()
