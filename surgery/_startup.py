"""Process start-up for the command-line tools: the oneDNN guard and a quiet TensorFlow import.

This module imports nothing of ``surgery`` and imports TensorFlow and Keras only inside the
functions that choose them, so it can run before TensorFlow is loaded (the top-level shims
``train.py`` / ``prune_and_finetune.py`` load it by file path, before ``import surgery``;
``surgery._backend`` calls :func:`prepare_process` first thing, before it imports TensorFlow).

* :func:`prepare_process` — what ``import surgery`` does before TensorFlow is imported: in a
  fresh process it chooses the Keras 2 API (:func:`select_keras2`, ``TF_USE_LEGACY_KERAS=1``),
  or Keras 3 for ``keras-surgery prune|train`` runs whose model file or ``--keras`` asks for
  it; a process that already imported TensorFlow or Keras keeps its choice.
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
* :func:`keras_generation` — the one decision which Keras a ``prune`` run uses, made before
  TensorFlow or Keras is imported: a ``--model-path`` file is loaded by the Keras that wrote
  it (:func:`file_keras_generation` peeks at it without TensorFlow: ``metadata.json`` of a
  ``.keras`` zip, the root ``keras_version`` attribute of an ``.h5``); otherwise ``--keras``
  (default 2) picks it. Keras 3 is then imported first (:func:`import_keras3_quietly`), so
  ``import surgery`` afterwards leaves ``tf.keras`` alone and the run is a Keras 3 run.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import zipfile
from typing import Iterator, Optional, Sequence

import h5py  # reads a model file's Keras version; imports no TensorFlow

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


def select_keras2() -> None:
    """Choose the Keras 2 API (tf-keras) for ``tf.keras`` in a process that has imported
    neither TensorFlow nor Keras yet (TensorFlow reads ``TF_USE_LEGACY_KERAS`` once, at
    import); in any other process change nothing."""
    if "tensorflow" not in sys.modules and "keras" not in sys.modules:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and tf-keras (with the Keras 2 API, unless Keras 3 came first) and
    initialise TensorFlow's devices with stderr muted; Python errors raised afterwards still
    show."""
    select_keras2()
    with muted_stderr():
        # Imported here, not at the top: TensorFlow must load after the Keras choice above.
        import tensorflow as tf
        import tf_keras  # noqa: F401  (its import logs to file descriptor 2 too)

        tf.config.list_physical_devices()


def prepare_process() -> None:
    """What ``import surgery`` does before it imports TensorFlow (see the module docstring):
    ``keras-surgery prune|train`` on Keras 3 imports Keras 3 first; a fresh process gets the
    Keras 2 API; the CLIs (and ``KERAS_SURGERY_AVOID_ONEDNN_CRASH=1``) get the oneDNN guard,
    and the CLIs import TensorFlow with stderr muted."""
    if "tensorflow" not in sys.modules and "keras" not in sys.modules:
        cli_argv = launched_cli_argv()
        if cli_argv is not None and keras_generation(cli_argv) == 3:
            avoid_onednn_crash()  # keras-surgery prune|train on Keras 3: Keras 3 first
            import_keras3_quietly()
    select_keras2()
    if "tensorflow" in sys.modules:
        return
    if launched_as_cli() or requested_by_environment():
        avoid_onednn_crash()  # TensorFlow 2.21 oneDNN crash on AVX-512 CPUs
    if launched_as_cli():  # keras-surgery: quiet C++ start-up, one-line errors
        import_tensorflow_quietly()


def file_keras_generation(path: str) -> Optional[int]:
    """2 or 3: the major version of the Keras that wrote the model file ``path``, read
    without TensorFlow (``keras_version`` in a ``.keras`` zip's ``metadata.json``, or the
    root attribute ``keras_version`` of an HDF5 file, which tf-keras and Keras 3 both
    write); None when the file is missing, not a model file, or says nothing."""
    version = None
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                version = json.loads(zf.read("metadata.json").decode("utf-8")).get(
                    "keras_version")
        else:
            with open(path, "rb") as fh:
                if fh.read(8) != b"\x89HDF\r\n\x1a\n":
                    return None
            with h5py.File(path, "r") as f:
                version = f.attrs.get("keras_version")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    major = str(version or "").split(".")[0]
    return int(major) if major in ("2", "3") else None


def _flag(argv: Sequence[str], name: str) -> Optional[str]:
    """The value of ``--name X`` / ``--name=X`` in ``argv`` (the last one wins)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def keras_generation(argv: Sequence[str],
                     file_flags: Sequence[str] = ("--model-path", "--restore")) -> int:
    """The Keras generation (2 or 3) a ``prune`` or ``train`` run with arguments ``argv``
    uses: the one that wrote the model file (``--model-path`` / ``--restore``) when the
    file says, else ``--keras`` (default 2). Imports neither TensorFlow nor Keras.

    Example:
        >>> keras_generation(["--keras", "3"]), keras_generation([])
        (3, 2)
    """
    for flag in file_flags:
        path = _flag(argv, flag)
        if path and os.path.isfile(path):
            found = file_keras_generation(path)
            if found is not None:
                return found
    asked = _flag(argv, "--keras")
    return 3 if asked == "3" else 2


def launched_cli_argv() -> Optional[list]:
    """The subcommand's arguments when this process is ``keras-surgery prune|train`` or
    ``python -m surgery.cli.prune|train`` / ``-m surgery.cli.main prune|train``; else None."""
    argv = list(sys.argv)
    orig = list(getattr(sys, "orig_argv", []))
    module = next((b for a, b in zip(orig, orig[1:]) if a == "-m"), "")
    if module in ("surgery.cli.prune", "surgery.cli.train"):
        return argv[1:]
    if module == "surgery.cli.main" or os.path.basename(argv[0] if argv else "").startswith(
            "keras-surgery"):
        return argv[2:] if argv[1:2] in (["prune"], ["train"]) else None
    return None


def import_keras3_quietly() -> None:
    """Import Keras 3 first (before ``surgery``), with the backend ``KERAS_BACKEND`` names
    and file descriptor 2 muted, so the process is a Keras 3 process."""
    os.environ.pop("TF_USE_LEGACY_KERAS", None)  # tf.keras is Keras 3 in this process
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with muted_stderr():
        # Imported here, not at the top: Keras 3 must load before TensorFlow chooses tf.keras,
        # and only in a process that runs Keras 3.
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf  # after Keras 3, for the same reason

            tf.config.list_physical_devices()


def cli_startup(generation: int = 2) -> None:
    """What every CLI does first: the oneDNN guard, then the quiet import of TensorFlow
    with the Keras 2 API (``generation`` 2) or of Keras 3 first (``generation`` 3; see
    :func:`keras_generation`)."""
    avoid_onednn_crash()
    if generation == 3:
        import_keras3_quietly()
    import_tensorflow_quietly()
