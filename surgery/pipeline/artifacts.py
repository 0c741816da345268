"""The pipeline's pictures and TFLite files, next to its report.

This module owns the optional outputs of ``prune_and_finetune.py`` beyond the pruned
``.h5`` and the report: the PNGs a user would rather look at than read (channels per
layer before/after, a per-group sensitivity analysis, accuracy against FLOPs) and the
TFLite exports (float32, dynamic-range int8 and full-integer int8, with their accuracy and
a size table like the TensorFlow pruning guide's). Each function returns plain values for
the report; files are written atomically by the functions it calls.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

from surgery._backend import keras
from surgery.pipeline.export import evaluate_tflite, export_tflite, size_table, size_table_markdown
from surgery.pipeline.plots import plot_accuracy_vs_flops, plot_channels, plot_sensitivity
from surgery.pipeline.sensitivity import accuracy_vs_flops, sensitivity

logger = logging.getLogger(__name__)


def write_plots(base: keras.Model, pruned: keras.Model, data, folder: str, *,
                criterion: str = "l1", ratios=(0.3, 0.5, 0.7), progress: bool = True,
                chosen_flops: Optional[int] = None) -> dict[str, Any]:
    """Channels before/after, sensitivity per group, accuracy vs FLOPs (PNG files).

    ``data`` is an ``(x, y)`` tuple (a validation split); sensitivity and accuracy-vs-FLOPs
    are measured on ``base`` without fine-tuning, as PaddleSlim's sensitivity tool does.
    ``chosen_flops`` (the FLOPs of the run's pruned model) is marked on the FLOPs plot.
    """
    paths = {"channels_png": str(plot_channels(base, pruned,
                                               os.path.join(folder, "channels.png")))}
    result = sensitivity(base, data, ratios, criterion=criterion, progress=progress)
    paths["sensitivity_png"] = str(plot_sensitivity(result,
                                                    os.path.join(folder, "sensitivity.png")))
    rows = accuracy_vs_flops(base, data, (0.0,) + tuple(ratios), criterion=criterion,
                             progress=progress)
    paths["accuracy_vs_flops_png"] = str(plot_accuracy_vs_flops(
        rows, os.path.join(folder, "accuracy_vs_flops.png"), chosen_flops=chosen_flops,
        title=f"validation accuracy vs FLOPs, uniform {criterion} cuts before fine-tuning\n"
              "(point labels: pruning ratio)"))
    return dict(paths, sensitivity={g: {str(r): a for r, a in v.items()}
                                    for g, v in result.items()},
                accuracy_vs_flops=rows)


def write_tflite(base: keras.Model, pruned: keras.Model, splits, folder: str, *,
                 progress: bool = True) -> dict[str, Any]:
    """Baseline and pruned float32, pruned dynamic-range and int8 ``.tflite`` files, the
    accuracy of each on the test split, and their raw and gzipped sizes."""
    files = {
        "baseline": export_tflite(base, os.path.join(folder, "baseline.tflite")),
        "pruned": export_tflite(pruned, os.path.join(folder, "pruned.tflite")),
        "pruned + dynamic int8": export_tflite(
            pruned, os.path.join(folder, "pruned_dynamic.tflite"), quantize="dynamic"),
        "pruned + int8": export_tflite(
            pruned, os.path.join(folder, "pruned_int8.tflite"), quantize="int8",
            representative_data=splits.train),
    }
    accuracy = {label: evaluate_tflite(path, splits.test, progress=progress)
                for label, path in files.items()}
    rows = size_table(files)
    for row in rows:
        row["accuracy"] = accuracy[row["label"]]
    table = size_table_markdown(rows).splitlines()
    table[0] += " test accuracy |"
    table[1] += "---:|"
    table[2:] = [f"{line} {accuracy[row['label']] * 100:.2f} % |"
                 for line, row in zip(table[2:], rows)]
    logger.info("TFLite sizes:\n%s", "\n".join(table))
    return dict(tflite=rows, acc_tflite_int8=accuracy["pruned + int8"],
                tflite_table_md="\n".join(table))
