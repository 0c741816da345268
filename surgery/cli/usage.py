"""What the command lines share about user errors: this module owns :class:`UsageError`
(an error the user can fix, reported as one line on stderr with exit status 2) and
:func:`check_generation`, the refusal of a run whose model file or ``--keras`` asks for a
Keras generation other than the one this process imported, and
:func:`add_run_folder_arguments`, the ``--out`` and ``--overwrite`` flags both commands
share. It imports no TensorFlow.
"""
from __future__ import annotations

import argparse
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


def add_keras_arguments(group, file_flag: str, built: str) -> None:
    """Add ``--keras`` (the Keras generation of ``built``, what a command makes when it reads
    no model file) and ``--trust-model-code`` (load the ``file_flag`` file even if loading
    runs its code) to an ``argparse`` argument ``group``."""
    group.add_argument("--keras", type=int, default=None, choices=(2, 3),
                       help=f"Keras generation of {built} (default 2: tf-keras; 3: Keras 3 "
                            f"on the backend KERAS_BACKEND names); a {file_flag} file is "
                            "loaded by the Keras that wrote it")
    group.add_argument("--trust-model-code", action="store_true",
                       help=f"load {file_flag} even if it holds code that loading runs (a "
                            "Lambda layer's bytecode); only for files you trust")


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"{self.prog}: error: {message.splitlines()[0]}\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" unless the help text already states its default."""

    def _get_help_string(self, action):
        if "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def command_parser(prog: str, description: str):
    """A command's parser (one-line errors, defaults in the help) and its first argument
    group, ``"model and data"``."""
    parser = OneLineParser(prog=prog, formatter_class=HelpFormatter, description=description)
    return parser, parser.add_argument_group("model and data")
