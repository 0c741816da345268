"""Run reports and atomic artifact writing for ``prune_and_finetune.py``.

This module owns what a pruning run leaves behind besides the model: the report dict
(the DESIGN.md keys ``params_before``/``params_after``, ``flops_before``/``flops_after``,
``acc_baseline``/``acc_pruned``/``acc_finetuned`` as fractions of the held-out test split;
``acc_pruned`` is what fine-tuning starts from, right after surgery and, with adaptive BN,
after BatchNormalization recalibration, and the optional ``acc_pruned_raw`` (before it) and
``acc_recalibrated`` (after it, ``None`` when turned off) show both,
``h5_bytes``/``h5_gzip_bytes``, ``prune_seconds``/``finetune_seconds``, plus whatever
extra settings the caller adds), its rendering as a markdown table, and the atomic writes
(a temporary file in the destination folder, then ``os.replace``) used for ``report.json``,
``report.md``, ``plan.json`` and the pruned ``.h5``, so a crash never leaves a half file.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import warnings
from typing import Any, Mapping, Optional, Union

from surgery.atomic import write_atomically
from surgery.export.saving import save_model_atomic  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("params_before", "params_after", "flops_before", "flops_after",
                 "acc_baseline", "acc_pruned", "acc_finetuned", "h5_bytes", "h5_gzip_bytes",
                 "prune_seconds", "finetune_seconds")

__all__ = ["REQUIRED_KEYS", "atomic_write", "save_model_atomic", "gzip_size",
           "build_report", "render_markdown", "write_report"]


def atomic_write(path: Union[str, os.PathLike], data: Union[str, bytes]) -> str:
    """Write ``data`` to ``path`` through a temporary file in the same folder and
    ``os.replace``; returns the path.

    Example:
        >>> import tempfile, os
        >>> p = atomic_write(os.path.join(tempfile.mkdtemp(), "a.txt"), "hi")
        >>> open(p).read()
        'hi'
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(payload)
    return write_atomically(path, write)


def gzip_size(path: Union[str, os.PathLike], level: int = 9) -> int:
    """Bytes of ``path`` once gzipped (in memory).

    Example:
        >>> import tempfile, os
        >>> p = atomic_write(os.path.join(tempfile.mkdtemp(), "z"), b"0" * 10000)
        >>> gzip_size(p) < 100
        True
    """
    with open(path, "rb") as f:
        return len(gzip.compress(f.read(), compresslevel=level, mtime=0))


def build_report(values: Mapping[str, Any]) -> dict:
    """Check that ``values`` has every key of :data:`REQUIRED_KEYS` (accuracies in [0, 1])
    and return a plain dict with derived ratios added (``flops_ratio``, ``params_ratio``).

    Example:
        >>> r = build_report(dict(params_before=10, params_after=5, flops_before=100,
        ...     flops_after=40, acc_baseline=0.9, acc_pruned=0.5, acc_finetuned=0.89,
        ...     h5_bytes=1000, h5_gzip_bytes=900, prune_seconds=1.0, finetune_seconds=2.0))
        >>> r["flops_ratio"]
        0.4
    """
    missing = [k for k in REQUIRED_KEYS if k not in values]
    if missing:
        raise ValueError(f"report is missing keys: {', '.join(missing)}")
    for key in ("acc_baseline", "acc_pruned", "acc_finetuned", "acc_pruned_raw",
                "acc_recalibrated"):
        if key not in REQUIRED_KEYS and values.get(key) is None:
            continue
        if not 0.0 <= float(values[key]) <= 1.0:
            raise ValueError(f"{key} must be a fraction in [0, 1], got {values[key]}")
    report = dict(values)
    report["flops_ratio"] = round(values["flops_after"] / max(values["flops_before"], 1), 6)
    report["params_ratio"] = round(values["params_after"] / max(values["params_before"], 1),
                                   6)
    return report


def _count(n: float) -> str:
    return f"{int(n):,}"


def _bytes(n: float) -> str:
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _surgery_rows(report: Mapping[str, Any]) -> list:
    """The "after surgery" rows: one, or stale statistics and adaptive BN side by side."""
    raw, recalibrated = report.get("acc_pruned_raw"), report.get("acc_recalibrated")
    if recalibrated is None:
        return [f"| after surgery | {report['acc_pruned'] * 100:.2f} % |"]
    batches = report.get("recalibrate_batches")
    rows = [] if raw is None else [f"| after surgery (stale BN statistics) | {raw * 100:.2f} % |"]
    return rows + [f"| after surgery + BN recalibration"
                   f"{f' ({batches} batches)' if batches else ''} | {recalibrated * 100:.2f} % |"]


def render_markdown(report: Mapping[str, Any]) -> str:
    """A markdown table of the run: parameters, FLOPs, .h5 sizes, the three accuracies and
    the times.

    Example:
        >>> r = build_report(dict(params_before=10, params_after=5, flops_before=100,
        ...     flops_after=40, acc_baseline=0.9, acc_pruned=0.5, acc_finetuned=0.89,
        ...     h5_bytes=1000, h5_gzip_bytes=900, prune_seconds=1.0, finetune_seconds=2.0))
        >>> print(render_markdown(r).splitlines()[2])
        | parameters | 10 | 5 | -50.0 % |
    """
    def change(before, after):
        return f"{(after - before) / before * 100:+.1f} %" if before else "n/a"

    b = report.get("h5_bytes_baseline")
    fmt = "." + str(report.get("model_format", "h5"))
    rows = [
        ("parameters", _count(report["params_before"]), _count(report["params_after"]),
         change(report["params_before"], report["params_after"])),
        ("FLOPs", _count(report["flops_before"]), _count(report["flops_after"]),
         change(report["flops_before"], report["flops_after"])),
        (f"{fmt} size", _bytes(b) if b else "", _bytes(report["h5_bytes"]),
         change(b, report["h5_bytes"]) if b else ""),
        (f"{fmt} gzipped", _bytes(report["h5_gzip_bytes_baseline"])
         if report.get("h5_gzip_bytes_baseline") else "", _bytes(report["h5_gzip_bytes"]),
         change(report["h5_gzip_bytes_baseline"], report["h5_gzip_bytes"])
         if report.get("h5_gzip_bytes_baseline") else ""),
    ]
    lines = ["| metric | before | after | change |", "|---|---:|---:|---:|"]
    lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |" for r in rows]
    if report.get("flops_target") is not None:  # --flops-target: what was asked, and got
        reached = report.get("flops_removed",
                             1.0 - report["flops_after"] / max(report["flops_before"], 1))
        lines += ["", "| FLOPs target | value |", "|---|---:|",
                  f"| FLOPs to remove (target) | {report['flops_target'] * 100:.1f} % |",
                  f"| FLOPs removed (reached) | {reached * 100:.1f} % |"]
        if report.get("plan_ratio") is not None:
            lines.append(f"| plan ratio | {report['plan_ratio']} |")
    if report.get("params_target") is not None:  # --params-target: what was asked, and got
        lines += ["", "| parameter target | value |", "|---|---:|",
                  f"| parameters to remove (target) | {report['params_target'] * 100:.1f} % |",
                  f"| parameters removed (reached) | {report['params_removed'] * 100:.1f} % |"]
    if report.get("latency_target") is not None:  # --latency-target: asked, and measured
        lines += ["", f"| latency target ({report.get('runtime')}, batch "
                      f"{report.get('latency_batch_size')}, {report.get('latency_threads')} "
                      "threads) | value |", "|---|---:|",
                  f"| latency to remove (target) | {report['latency_target'] * 100:.1f} % |",
                  f"| latency before (ms) | {report['latency_before'] * 1e3:.2f} |",
                  f"| latency after (ms) | {report['latency_after'] * 1e3:.2f} |",
                  f"| latency removed (measured) | {report['latency_removed'] * 100:.1f} % "
                  f"(± {report.get('latency_stability', 0) * 100:.1f}) |"]
    if report.get("candidate_scores"):  # EagleEye: the first round's comparison
        scores = report["candidate_scores"]
        chosen = report.get("candidate") or 0
        lines += ["", f"Plan chosen among {len(scores)} candidate allocations by top-1 "
                      "agreement with the original after adaptive BN (training examples): "
                      f"candidate {chosen} ({scores[chosen] * 100:.1f} %; the plain plan: "
                      f"{scores[0] * 100:.1f} %)."]
    lines += [
        "",
        "| accuracy (test split) | value |",
        "|---|---:|",
        f"| before pruning | {report['acc_baseline'] * 100:.2f} % |",
        *_surgery_rows(report),
        f"| after fine-tuning | {report['acc_finetuned'] * 100:.2f} % |",
        "",
        "| time | seconds |",
        "|---|---:|",
        f"| pruning | {report['prune_seconds']:.1f} |",
        f"| fine-tuning | {report['finetune_seconds']:.1f} |",
    ]
    if report.get("baseline_seconds"):
        lines.append(f"| baseline training | {report['baseline_seconds']:.1f} |")
    if report.get("tflite_table_md"):
        lines += ["", "TFLite exports:", "", report["tflite_table_md"]]
    pictures = [report[k] for k in ("channels_png", "sensitivity_png",
                                    "accuracy_vs_flops_png") if report.get(k)]
    if pictures:
        lines += [""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in pictures]
    return "\n".join(lines) + "\n"


def write_report(folder: Union[str, os.PathLike], report: Mapping[str, Any]
                 ) -> tuple[str, str]:
    """Write ``report.json`` and ``report.md`` into ``folder`` atomically; returns both
    paths.

    Example::

        json_path, md_path = write_report("runs/x", build_report(values))
    """
    folder = os.fspath(folder)
    json_path = atomic_write(os.path.join(folder, "report.json"),
                             json.dumps(dict(report), indent=2, sort_keys=True, default=str)
                             + "\n")
    title = f"# Pruning report: {report.get('model', 'model')}\n\n"
    md_path = atomic_write(os.path.join(folder, "report.md"), title + render_markdown(report))
    logger.info("wrote %s and %s", json_path, md_path)
    return json_path, md_path
