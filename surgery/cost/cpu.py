"""What this machine's CPU offers the runtimes: instruction-set features and SIMD width.

This module owns :func:`cpu_features` (the vector extensions the CPU reports, read from
``/proc/cpuinfo`` on Linux, else from ``numpy``'s own CPU detection) and
:func:`simd_block` (the channel block of ONNX Runtime's NCHWc layout and XNNPACK's
tiles: 16 float32 lanes with AVX-512, 8 with AVX2, 4 otherwise). Cost tables are keyed by
the features, so a table measured on another CPU is never reused; budgets snap widths to
at least the block. Nothing here is assumed: the machines a project runs on differ.

>>> simd_block(["avx2", "fma"]), simd_block(["avx2", "avx512f"]), simd_block([])
(8, 16, 4)
"""
from __future__ import annotations

import functools
import os
import platform
from typing import Iterable, Optional

#: the extensions that change which kernels the runtimes pick
RELEVANT = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
            "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "neon", "asimd", "sve")


@functools.lru_cache(maxsize=1)
def cpu_features() -> tuple:
    """The sorted vector extensions of this CPU among :data:`RELEVANT`, plus the machine
    type (``x86_64``...), e.g. ``('avx', 'avx2', 'fma', 'sse4_2', 'x86_64')``."""
    flags: set = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":")[0].strip() in ("flags", "Features"):
                    flags |= set(line.split(":", 1)[1].split())
    except OSError:
        pass
    if not flags:  # not Linux: numpy's runtime dispatch knows the CPU too
        try:
            # private, and moved in numpy 2: imported only off Linux, where /proc is missing
            from numpy._core._multiarray_umath import __cpu_features__ as found
        except ImportError:  # pragma: no cover  (older numpy)
            from numpy.core._multiarray_umath import __cpu_features__ as found  # numpy 1
        flags = {k.lower().replace("avx512_skx", "avx512f") for k, v in found.items() if v}
    return tuple(sorted({f for f in flags if f in RELEVANT} | {platform.machine() or "cpu"}))


def simd_block(features: Optional[Iterable[str]] = None) -> int:
    """float32 lanes of the widest vector unit: 16 (AVX-512), 8 (AVX2), else 4."""
    features = set(cpu_features() if features is None else features)
    if "avx512f" in features:
        return 16
    if "avx2" in features or "avx" in features:
        return 8
    return 4


def default_threads() -> int:
    """The cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover  (macOS, Windows)
        return os.cpu_count() or 1
