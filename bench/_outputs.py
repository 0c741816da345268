"""What the trained-baseline benches share on the way out: their output and cache flags
(:func:`add_output_arguments`) and the JSON they read back (:func:`read_json`) and
write (:func:`write_json`, atomically, through :func:`surgery.atomic.write_atomically`)."""
from __future__ import annotations

import argparse
import json
import os
import pathlib

from surgery.atomic import write_atomically


def add_output_arguments(parser: argparse.ArgumentParser, *, work_dir: str, work: str,
                         plot: str, measure: str, quick: str) -> None:
    """``--work-dir`` (default ``work_dir``: ``work``), ``--json``, ``--markdown``,
    ``--plot`` (``plot``), ``--train-only`` (the baseline's ``measure``) and ``--quick``
    (``quick``)."""
    parser.add_argument("--work-dir", default=work_dir, help=work)
    parser.add_argument("--json", default=None, help="write every result here")
    parser.add_argument("--markdown", default=None, help="write the table here")
    parser.add_argument("--plot", default=None, help=plot)
    parser.add_argument("--train-only", action="store_true",
                        help=f"train (or load) the baseline, report its {measure}, stop")
    parser.add_argument("--quick", action="store_true", help=quick)


def read_json(path: str) -> dict:
    """The JSON object at ``path``; ``{}`` where there is none (a cache without its
    record)."""
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write_json(path: str, data) -> None:
    """``data`` as indented JSON at ``path`` (anything else as its ``str``)."""
    text = json.dumps(data, indent=1, default=str)
    write_atomically(path, lambda tmp: pathlib.Path(tmp).write_text(text))
