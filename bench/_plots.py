"""The accuracy-vs-latency picture the Fashion-MNIST benches draw (matplotlib, Agg)."""
from __future__ import annotations

import os
from typing import List


def accuracy_vs_latency(acc_base: float, rows: List[dict], path: str, target: float,
                        title: str) -> str:
    """One point per row (``latency_ratio``, ``mean`` ± ``std`` accuracy, optional
    ``latency_spread``; rows without a ``latency_ratio`` are left out), the baseline's
    accuracy and the ``target`` latency ratio as lines; written to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.axhline(acc_base * 100, color="grey", ls="--", lw=1, label="baseline")
    ax.axvline(target, color="grey", ls=":", lw=1, label=f"target ({target:.2f})")
    for r, marker in zip(rows, "osD^v<>"):
        if r.get("latency_ratio") is not None:
            ax.errorbar(r["latency_ratio"], r["mean"] * 100, yerr=r["std"] * 100,
                        xerr=r.get("latency_spread"), fmt=marker, capsize=3,
                        label=r["variant"])
    ax.set_xlabel("latency / baseline latency (ONNX Runtime, batch 32, 2 threads)")
    ax.set_ylabel("test accuracy after fine-tuning (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
