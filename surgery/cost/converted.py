"""Converted models on disk, so a latency plan converts the original model only once.

This module owns the cache of what a runtime runs: the bytes a converter made from a Keras
model (ONNX from tf2onnx or ``model.export``, a TFLite flatbuffer). Converting is most of
a cached latency plan's time (tf2onnx takes about 6 s for MobileNetV2), and a plan
converts the original and every pruned candidate it checks. Each file is keyed by a hash
of the model's architecture, its weights and the runtime's version string (which names the
converter's), so another model, other weights or another converter are never served a
stale file. Files live in ``converted/`` under the cost-table folder; when they pass
``max_bytes`` together, the least recently used go first.

>>> import tempfile
>>> folder = tempfile.mkdtemp()
>>> calls = []
>>> def convert():
...     calls.append(1)
...     return b"onnx bytes"
>>> converted("abc", convert, "onnx", folder), converted("abc", convert, "onnx", folder)
(b'onnx bytes', b'onnx bytes')
>>> len(calls)
1
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from typing import Callable, Optional

from surgery.atomic import write_atomically

logger = logging.getLogger(__name__)

#: converted files kept together, at most (least recently used go first)
MAX_BYTES = 768 * 2 ** 20


def architecture_of(model) -> str:
    """``model``'s architecture as text (its JSON; for a layer that cannot serialise, the
    layer classes and output shapes)."""
    try:
        return model.to_json()
    except Exception:  # noqa: BLE001 — a layer that cannot serialise: its class and shape
        return repr([(type(l).__name__, str(l.output.shape)) for l in model.layers])


def model_key(model, version: str) -> str:
    """A hash of ``model``'s architecture and weights, and the runtime ``version``."""
    h = hashlib.sha256(version.encode())
    h.update(architecture_of(model).encode())
    for w in model.get_weights():
        h.update(f"{w.dtype}{w.shape}".encode())
        h.update(w.tobytes())
    return h.hexdigest()[:24]


def converted(key: str, convert: Callable[[], bytes], suffix: str, folder: str,
              max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes ``convert()`` makes, read from ``folder/converted/<key>.<suffix>`` when an
    earlier call stored them (else converted and stored)."""
    path = os.path.join(folder, "converted", f"{key}.{suffix}")
    with contextlib.suppress(OSError):
        with open(path, "rb") as f:
            data = f.read()
        os.utime(path)
        logger.debug("converted model from the cache: %s", path)
        return data
    data = convert()
    if len(data) <= max_bytes:
        try:
            write_atomically(path, lambda tmp: _write(tmp, data))
            _evict(os.path.dirname(path), max_bytes, keep=path)
        except OSError as e:  # a read-only cache costs time, not the plan
            logger.info("could not cache the converted model in %s: %s", path, e)
    return data


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _evict(folder: str, max_bytes: int, keep: Optional[str] = None) -> None:
    """Remove the least recently used files until the folder holds at most ``max_bytes``."""
    files = []
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        with contextlib.suppress(OSError):
            st = os.stat(path)
            files.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files):
        if total <= max_bytes:
            break
        if path != keep:
            with contextlib.suppress(OSError):
                os.remove(path)
            total -= size
