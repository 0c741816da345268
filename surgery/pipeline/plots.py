"""Figures for pruning reports: channels per layer, a sensitivity heat map, accuracy vs FLOPs.

This module owns the project's plots. Each function draws with matplotlib's Agg renderer
(it never switches pyplot's global backend, so notebooks keep theirs), saves a PNG
atomically (a temporary file next to ``path``, then ``os.replace``) and returns a
:class:`PlotPath`: the path as a ``str``, carrying the drawn ``.ax`` and ``.figure`` so a
notebook can show or restyle them. Pass ``ax=`` to draw into an axes of your own figure.
"""
from __future__ import annotations

import logging
import os
from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import PowerNorm
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from surgery._backend import keras
from surgery.pipeline.export import write_atomically
from surgery.engine.flatten import flatten_model

logger = logging.getLogger(__name__)

DPI = 100


class PlotPath(str):
    """The path of a saved PNG (a ``str``), with the ``ax`` and ``figure`` drawn.

    Example::

        p = surgery.plots.plot_sensitivity(result, "sens.png")
        p.figure          # shows the figure in a notebook
        str(p)            # 'sens.png'
    """

    ax: Axes
    figure: Figure

    def __new__(cls, path: str, ax: Axes) -> "PlotPath":
        obj = super().__new__(cls, os.fspath(path))
        obj.ax = ax
        obj.figure = ax.figure
        return obj


def _axes(ax: Optional[Axes], size: tuple[float, float]) -> Axes:
    if ax is not None:
        return ax
    figure = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure.add_subplot(1, 1, 1)


def save_png(ax: Axes, path: str) -> PlotPath:
    """Save the figure of ``ax`` to ``path`` as a PNG, atomically; return a :class:`PlotPath`.

    Example::

        save_png(ax, "figure.png")
    """
    figure = ax.figure
    if figure.canvas is None or not hasattr(figure.canvas, "print_figure"):
        FigureCanvasAgg(figure)
    figure.tight_layout()
    write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=DPI))
    logger.info("saved plot %s", path)
    return PlotPath(path, ax)


def _channel_layers(model: keras.Model) -> dict[str, int]:
    """Output channels of every layer with ``filters`` or ``units``, in model order."""
    out: dict[str, int] = {}
    for layer in flatten_model(model).layers:
        width = getattr(layer, "filters", None) or getattr(layer, "units", None)
        if isinstance(width, (int, np.integer)):
            out[layer.name] = int(width)
    return out


def plot_channels(model: keras.Model, pruned: keras.Model, path: str, *,
                  ax: Optional[Axes] = None, title: Optional[str] = None) -> PlotPath:
    """Bar chart of the output channels of every layer with filters/units, before vs after.

    Example::

        smaller = surgery.prune(model, ratio=0.5)
        surgery.plots.plot_channels(model, smaller, "channels.png")
    """
    before = _channel_layers(model)
    after = _channel_layers(pruned)
    if not before:
        raise ValueError(f"plot_channels: model {model.name!r} has no layer with filters or units")
    names = list(before)
    missing = [n for n in names if n not in after]
    if missing:
        logger.warning("plot_channels: %d layers are not in the pruned model (shown as 0): %s",
                       len(missing), missing[:5])
    ax = _axes(ax, (max(6.0, 0.35 * len(names) + 2), 4.5))
    pos = np.arange(len(names))
    ax.bar(pos - 0.2, [before[n] for n in names], width=0.4, label="before", color="#bbbbbb")
    ax.bar(pos + 0.2, [after.get(n, 0) for n in names], width=0.4, label="after",
           color="#1f77b4")
    ax.set_xticks(pos)
    ax.set_xticklabels(names, rotation=90, fontsize=7 if len(names) > 20 else 9)
    ax.set_ylabel("output channels")
    total_before, total_after = sum(before.values()), sum(after.get(n, 0) for n in names)
    ax.set_title(title or f"channels per layer: {total_before} -> {total_after} "
                          f"({1 - total_after / max(total_before, 1):.0%} removed)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return save_png(ax, path)


def plot_sensitivity(result: Mapping[str, Mapping[float, float]], path: str, *,
                     ax: Optional[Axes] = None, title: Optional[str] = None,
                     ylabel: str = "accuracy") -> PlotPath:
    """Heat map of :func:`surgery.sensitivity`'s result: one row per channel group in
    network order (input at the top), one column per pruning ratio, the score printed in
    each cell. The colour is the cell's loss against its group's unpruned score (ratio 0,
    else the row's best), on a square-root scale so that drops of a point or two already
    turn from green toward yellow and the groups that lose the most stand out in red.
    ``ylabel`` names the score; accuracies (scores in [0, 1] with ``ylabel="accuracy"``)
    print as percentages.

    Example::

        result = surgery.sensitivity(model, (x_val, y_val))
        surgery.plots.plot_sensitivity(result, "sensitivity.png")
    """
    if not result:
        raise ValueError("plot_sensitivity: the result is empty")
    names = list(result)
    ratios = sorted({r for scores in result.values() for r in scores})
    grid = np.array([[result[n].get(r, np.nan) for r in ratios] for n in names], dtype=float)
    percent = ylabel == "accuracy" and np.nanmin(grid) >= 0.0 and np.nanmax(grid) <= 1.0
    scale = 100.0 if percent else 1.0
    base = grid[:, [ratios.index(0.0)]] if 0.0 in ratios else np.nanmax(grid, 1, keepdims=True)
    drop = np.clip((base - grid) * scale, 0.0, None)
    top = float(np.nanmax(drop)) if np.nanmax(drop) > 0 else 1.0
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=top)
    ax = _axes(ax, (max(5.0, 1.0 * len(ratios) + 3.5), max(3.0, 0.32 * len(names) + 1.6)))
    image = ax.imshow(drop, cmap="RdYlGn_r", norm=norm, aspect="auto",
                      interpolation="nearest")
    ax.figure.colorbar(image, ax=ax, label="points lost" if percent else f"{ylabel} lost")
    font = 8 if len(names) > 15 else 9
    for i in range(len(names)):
        for j in range(len(ratios)):
            if np.isnan(grid[i, j]):
                continue
            text = f"{100 * grid[i, j]:.1f}" if percent else f"{grid[i, j]:.3g}"
            shade = float(norm(drop[i, j]))
            ax.text(j, i, text, ha="center", va="center", fontsize=font,
                    color="white" if shade < 0.12 or shade > 0.85 else "black")
    ax.set_xticks(np.arange(len(ratios)))
    ax.set_xticklabels([f"{r:g}" for r in ratios])
    ax.set_yticks(np.arange(len(names)))
    ax.set_yticklabels(names, fontsize=font)
    ax.set_xlabel("fraction of the group's channels removed")
    ax.set_ylabel("channel group (network order)")
    ax.set_title(title or f"{ylabel}{' (%)' if percent else ''} after pruning one group "
                          "(no fine-tuning)")
    return save_png(ax, path)


def plot_accuracy_vs_flops(rows: Sequence[Mapping[str, float]], path: str, *,
                           ax: Optional[Axes] = None, title: Optional[str] = None,
                           label: Optional[str] = None,
                           chosen_flops: Optional[float] = None) -> PlotPath:
    """Accuracy against MFLOPs, each point labelled with its ratio
    (:func:`surgery.accuracy_vs_flops`). Call it again with the same ``ax`` to compare
    criteria or policies (``label=`` names the line). ``chosen_flops`` draws a dashed
    line at the FLOPs of the cut that was kept.

    Example::

        rows = surgery.accuracy_vs_flops(model, (x_val, y_val), ratios=(0, .3, .5))
        surgery.plots.plot_accuracy_vs_flops(rows, "tradeoff.png")
    """
    if not rows:
        raise ValueError("plot_accuracy_vs_flops: no rows")
    rows = sorted(rows, key=lambda r: r["flops"])
    ax = _axes(ax, (6.0, 4.5))
    flops = [r["flops"] / 1e6 for r in rows]
    acc = [r["accuracy"] for r in rows]
    ax.plot(flops, acc, marker="o", label=label)
    for f, a, r in zip(flops, acc, rows):
        if "ratio" in r:
            ax.annotate(f"{r['ratio']:g}", (f, a), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
    if chosen_flops is not None:
        ax.axvline(chosen_flops / 1e6, color="tab:red", linestyle="--",
                   label=f"chosen cut ({chosen_flops / 1e6:.3g} MFLOPs)")
    ax.set_xlabel("MFLOPs (per example)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "accuracy vs FLOPs (labels: pruning ratio)")
    ax.grid(alpha=0.3)
    if label or chosen_flops is not None:
        ax.legend()
    return save_png(ax, path)


__all__ = ["plot_channels", "plot_sensitivity", "plot_accuracy_vs_flops", "PlotPath",
           "save_png"]
