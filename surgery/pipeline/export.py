"""Exporting pruned models, and comparing the sizes of the exported files.

This module is the pipeline's one place to import export functions from, and owns the
size report: :func:`size_table` and :func:`size_table_markdown` give raw and gzipped
file sizes side by side, like the table in the TensorFlow model-optimisation pruning
guide (baseline, pruned, pruned + quantised). The exporters live next to it and are
re-exported here: TensorFlow Lite in :mod:`surgery.export.tflite` (:func:`export_tflite`,
:func:`tflite_predict`, :func:`evaluate_tflite`, :func:`tflite_input_dtype`) and ONNX in
:mod:`surgery.export.onnx` (:func:`export_onnx`, :func:`onnx_predict`); the
array helpers (:func:`data_arrays`, :func:`class_ids`) in :mod:`surgery.export.batches`.
"""
from __future__ import annotations

import gzip
import os
from typing import Mapping

from surgery.atomic import write_atomically
from surgery.export.batches import (PROGRESS_MIN_EXAMPLES, Data, RepresentativeData,
                                      class_ids, data_arrays)
from surgery.export.onnx import export_onnx, onnx_predict
from surgery.export.tflite import (DEFAULT_CALIBRATION_EXAMPLES, QUANTIZE_MODES,
                                     evaluate_tflite, export_tflite, tflite_input_dtype,
                                     tflite_predict)


def size_table(entries: Mapping[str, str], compresslevel: int = 9) -> list[dict]:
    """Raw and gzipped sizes of files, one row per ``label -> path`` entry, in order.

    Each row: ``label``, ``path``, ``bytes``, ``gzip_bytes`` (``len(gzip.compress(data))``:
    gzip is a fair proxy for what a download or an app bundle costs, and it shows the
    zeros that sparse training leaves, which a raw size hides) and ``relative`` (gzipped
    size over the first row's).

    Example::

        rows = surgery.size_table({"baseline": "base.tflite", "pruned": "pruned.tflite",
                                   "pruned + int8": "pruned_int8.tflite"})
        print(surgery.size_table_markdown(rows))
    """
    rows: list[dict] = []
    for label, path in entries.items():
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"size_table: no file at {path!r} (entry {label!r})")
        with open(path, "rb") as f:
            content = f.read()
        rows.append(dict(label=str(label), path=path, bytes=len(content),
                         gzip_bytes=len(gzip.compress(content, compresslevel=compresslevel))))
    if rows:
        first = rows[0]["gzip_bytes"] or 1
        for row in rows:
            row["relative"] = row["gzip_bytes"] / first
    return rows


def _human(n: int) -> str:
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def size_table_markdown(rows: list[dict]) -> str:
    """A Markdown table of :func:`size_table` rows.

    Example::

        print(surgery.size_table_markdown(surgery.size_table({"baseline": "base.tflite"})))
        # | model | size | gzipped | gzipped vs first |
        # |---|---:|---:|---:|
        # | baseline | 64.77 KB (64772 B) | 58.10 KB (58101 B) | 1.00x |
    """
    lines = ["| model | size | gzipped | gzipped vs first |", "|---|---:|---:|---:|"]
    for row in rows:
        label = str(row["label"]).replace("|", "\\|")
        lines.append(f"| {label} | {_human(row['bytes'])} ({row['bytes']} B) | "
                     f"{_human(row['gzip_bytes'])} ({row['gzip_bytes']} B) | "
                     f"{row.get('relative', 1.0):.2f}x |")
    return "\n".join(lines)


__all__ = ["export_tflite", "tflite_predict", "evaluate_tflite", "tflite_input_dtype",
           "export_onnx", "onnx_predict", "size_table", "size_table_markdown",
           "data_arrays", "class_ids", "write_atomically", "Data", "RepresentativeData",
           "QUANTIZE_MODES", "DEFAULT_CALIBRATION_EXAMPLES", "PROGRESS_MIN_EXAMPLES"]
