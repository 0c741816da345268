"""What the command lines share about user errors: this module owns :class:`UsageError`
(an error the user can fix, reported as one line on stderr with exit status 2) and
:func:`check_generation`, the refusal of a run whose model file or ``--keras`` asks for a
Keras generation other than the one this process imported, and
:func:`add_run_folder_arguments`, the ``--out`` and ``--overwrite`` flags both commands
share. It imports no TensorFlow.
"""
from __future__ import annotations

from typing import Optional

from surgery._startup import file_keras_generation


class UsageError(Exception):
    """An error the user can fix (bad file, name, flag or target): one line, exit 2."""


def check_generation(model_path: Optional[str], keras_flag: Optional[int], process: int,
                     command: str) -> None:
    """Refuse a run that needs another Keras generation than ``process`` (2 or 3, the one
    the start-up imported first; see :func:`surgery._startup.keras_generation`): the
    generation that wrote ``model_path``, else ``keras_flag``. With neither, the run uses
    the process's own (a command line starts Keras 2 then; ``main([...])`` called in a
    Keras 3 process runs on Keras 3).

    Example:
        >>> check_generation(None, None, 3, "train.py")
        >>> check_generation(None, 3, 2, "train.py")
        Traceback (most recent call last):
        ...
        surgery.cli.usage.UsageError: this run needs Keras 3 but this process already imported Keras 2 (tf-keras); start it as `python train.py ...` or `keras-surgery ...`, which choose before importing Keras
    """
    written_by = file_keras_generation(model_path) if model_path else None
    if keras_flag is not None and written_by is not None and keras_flag != written_by:
        raise UsageError(f"--keras {keras_flag} conflicts with {model_path}, written by "
                         f"Keras {written_by}; drop --keras (a model file is loaded by the "
                         "Keras that wrote it)")
    wanted = written_by or keras_flag or process
    if wanted != process:
        label = "Keras 2 (tf-keras)" if process == 2 else "Keras 3"
        raise UsageError(f"this run needs Keras {wanted} but this process already imported "
                         f"{label}; start it as `python {command} ...` or `keras-surgery "
                         "...`, which choose before importing Keras")


def add_run_folder_arguments(group, default: str, again: str) -> None:
    """Add a command line's ``--out`` (whose ``default`` the help names) and
    ``--overwrite`` (to ``again`` — do the run again — into a folder that holds one) to an
    ``argparse`` argument ``group``; :class:`~surgery.pipeline.resume.RunFolder` reads both."""
    group.add_argument("--out", default=None,
                       help=f"output folder (default: {default}); rerunning the same "
                            "command with the same --out resumes an interrupted run")
    group.add_argument("--overwrite", action="store_true",
                       help=f"{again} in an --out that holds a finished (or unfinished) "
                            "run instead of refusing it")
