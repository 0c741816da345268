"""``keras-surgery``: the console script, with the subcommands ``prune`` and ``train``.

``keras-surgery prune ...`` is :func:`surgery.cli.prune.main` (the checkout's
``prune_and_finetune.py``) and ``keras-surgery train ...`` is :func:`surgery.cli.train.main`
(the checkout's ``train.py``); each takes the same flags (``keras-surgery prune --help``).
Errors a user can fix print one line to stderr and exit with status 2. For ``prune``, the
Keras generation (the one that wrote ``--model-path``, else ``--keras``) is chosen while
``surgery`` is first imported, before TensorFlow or Keras
(:func:`surgery._startup.keras_generation`, called from ``surgery._backend``).

Example::

    keras-surgery prune --model lenet5 --baseline-epochs 1 --finetune-epochs 1 --out runs/t
    python -m surgery.cli.main train --model lenet5 --data digits --epochs 1 --out runs/l
"""
from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

PROG = "keras-surgery"
COMMANDS = {
    "prune": ("surgery.cli.prune",
              "prune a trained model (or a freshly trained baseline) and fine-tune it"),
    "train": ("surgery.cli.train", "train a model of the zoo, optionally for sparsity"),
}


def _usage() -> str:
    lines = [f"usage: {PROG} {{{','.join(COMMANDS)}}} [options]", "",
             "Structured channel pruning for Keras models.", "", "commands:"]
    lines += [f"  {name:<8}{text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", f"'{PROG} COMMAND --help' lists the options of a command."]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to a subcommand; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        sys.stderr.write(f"{PROG}: error: a command is required ({', '.join(COMMANDS)}); "
                         f"see {PROG} --help\n")
        return 2
    if argv[0] in ("-h", "--help"):
        sys.stdout.write(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        sys.stderr.write(f"{PROG}: error: unknown command {command!r} "
                         f"(choose from {', '.join(COMMANDS)})\n")
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    module.PROG = f"{PROG} {command}"  # --help and error lines name the subcommand
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
