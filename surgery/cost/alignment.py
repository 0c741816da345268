"""Which channel multiple pays in this runtime on this CPU: the SIMD block, or twice it.

This module owns :func:`choose_alignment`. Widths are always multiples of the CPU's SIMD
block (:func:`surgery.cost.cpu.simd_block`); whether a coarser step pays is measured, not
assumed: for the costliest layers of the model (the one whose width follows one group, a
depthwise conv, and the one whose output width alone changes, a pointwise conv), it times
micro-models at a width aligned to twice the block and one block narrower. When taking that
one block away saves less than half of its share of the time in every probe, the runtime
gains nothing from the finer step, and widths snap to twice the block. The probes go
through the same cached micro-benchmarks as the tables (:func:`surgery.cost.micro.measure`).
"""
from __future__ import annotations

import logging

import surgery.cost.micro as micro
from surgery.cost.width import call_widths

logger = logging.getLogger(__name__)


def _probes(est, block: int) -> list:
    """Up to two ``(info, followers, in-width fn, out widths)`` probe layers: the costliest
    one-width (tied) table and the costliest output-only table."""
    best: dict = {}
    for k, table in est._used:
        info = est.calls[k][0]
        i0, o0 = call_widths(info)
        kind = "tied" if getattr(table, "ratio", None) is not None else \
            ("out" if len(table.ins) == 1 and len(table.outs) > 1 else None)
        if kind is None:
            continue
        full = float(table(i0, o0))
        if full > best.get(kind, (None, -1.0))[1]:
            best[kind] = ((info, kind, i0, o0), full)
    return [v[0] for v in best.values()]


def choose_alignment(est, runtime, batch: int, threads: int, cache, block: int, keras,
                     progress: bool = False) -> dict:
    """``{"round_to": block or 2 * block, "probes": [...]}`` for ``est`` (a measured
    :class:`~surgery.cost.table.LatencyEstimator`)."""
    chains = micro.cheap_followers(est.graph) if hasattr(est, "graph") else {}
    entries, pairs = [], []
    for info, kind, i0, o0 in _probes(est, block):
        width = i0 if kind == "tied" else o0
        hi = (width // 2) // (2 * block) * (2 * block)
        if hi < 2 * block:
            continue
        lo = hi - block
        after = tuple(chains.get(info.name, ()))
        sig = []
        for w in (hi, lo):
            i, o = (w, int(round(w * o0 / i0))) if kind == "tied" else (i0, w)
            entries.append(micro.channel_entry(info, i, o, after))
            sig.append(entries[-1][0])
        pairs.append((info.name, hi, lo, sig))
    if not pairs:
        return dict(round_to=block, probes=[])
    seconds = micro.measure(entries, runtime, batch, threads, cache, keras, progress=progress)
    probes, coarse = [], True
    for name, hi, lo, (s_hi, s_lo) in pairs:
        saved = (seconds[s_hi] - seconds[s_lo]) / max(seconds[s_hi], 1e-12)
        share = block / hi
        probes.append(dict(layer=name, widths=[hi, lo], saved=round(float(saved), 4),
                           share=round(share, 4)))
        coarse &= bool(saved < 0.5 * share)
    chosen = 2 * block if coarse else block
    logger.info("alignment: round_to=%d (probes %s)", chosen, probes)
    return dict(round_to=int(chosen), probes=probes)


__all__ = ["choose_alignment"]
