"""Importing TensorFlow without its C++ start-up chatter, for the command-line tools.

TensorFlow writes CUDA-probing lines to file descriptor 2 on machines without a GPU,
before any log level applies. ``train.py`` and ``prune_and_finetune.py`` call
:func:`import_tensorflow_quietly` first when run from the shell, so a user error leaves
exactly one line on stderr. It lives outside ``surgery`` because importing that package
would import TensorFlow before the descriptor is muted.
"""
from __future__ import annotations

import os


def import_tensorflow_quietly() -> None:
    """Import TensorFlow (Keras 2 API) and initialise its devices with stderr muted;
    Python errors raised afterwards still show."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        from surgery._backend import tf
        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
