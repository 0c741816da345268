"""Cost tables on disk: measured seconds, keyed so that a stale table is never reused.

This module owns :class:`TableCache`: one JSON file per measuring *environment* — runtime
and its version (and the converter's), CPU features, threads and batch size — whose name is
a hash of that environment, so a table measured with another runtime version, on another
CPU, with other threads or another batch size is never found. Inside, each entry is keyed
by a micro-model's signature (layer class, config without its name, input shape, output
width). The folder is ``$SURGERY_COST_CACHE`` when set, else ``$XDG_CACHE_HOME`` (or
``~/.cache``) ``/keras-surgery/cost``. Files are written atomically and merged with what
another process wrote meanwhile.

>>> import tempfile
>>> folder = tempfile.mkdtemp()
>>> c = TableCache(dict(runtime="onnxruntime", threads=2, batch=1), folder)
>>> c.get("conv 8->16") is None, c.misses
(True, 1)
>>> c.put("conv 8->16", 0.001); _ = c.save()
>>> TableCache(dict(runtime="onnxruntime", threads=2, batch=1), folder).get("conv 8->16")
0.001
>>> TableCache(dict(runtime="onnxruntime", threads=4, batch=1), folder).get("conv 8->16")
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Mapping, Optional

from surgery.atomic import write_atomically

logger = logging.getLogger(__name__)

#: environment variable naming the folder of the cost tables
ENV = "SURGERY_COST_CACHE"


def cache_dir() -> str:
    """Where cost tables live: ``$SURGERY_COST_CACHE``, else the user's cache folder."""
    if os.environ.get(ENV):
        return os.environ[ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "keras-surgery", "cost")


def digest(value) -> str:
    """A short stable hash of a JSON-able value."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class TableCache:
    """Measured seconds for one environment ``key`` (a JSON-able dict), in ``folder``."""

    def __init__(self, key: Mapping, folder: Optional[str] = None):
        self.key = dict(key)
        self.folder = folder or cache_dir()
        self.path = os.path.join(self.folder, f"{self.key.get('runtime', 'cost')}-"
                                              f"{digest(self.key)}.json")
        self.entries: dict = self._read()
        self._dirty = False
        self.hits = self.misses = 0

    def _read(self) -> dict:
        try:
            with open(self.path) as f:
                stored = json.load(f)
        except (OSError, ValueError):
            return {}
        if stored.get("key") != json.loads(json.dumps(self.key, default=str)):
            logger.info("%s belongs to another environment; not reused", self.path)
            return {}
        return dict(stored.get("entries", {}))

    def get(self, signature: str) -> Optional[float]:
        value = self.entries.get(signature)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, signature: str, seconds) -> None:
        """Store ``seconds`` (a number, or a JSON-able list of numbers) under
        ``signature``."""
        self.entries[signature] = seconds if isinstance(seconds, list) else float(seconds)
        self._dirty = True

    def save(self) -> str:
        """Write the table (merged with entries another process saved meanwhile)."""
        if not self._dirty:
            return self.path
        merged = {**self._read(), **self.entries}
        text = json.dumps(dict(key=self.key, entries=merged), sort_keys=True, indent=0,
                          default=str)

        def write(tmp: str) -> None:
            with open(tmp, "w") as f:
                f.write(text)

        write_atomically(self.path, write)
        self._dirty = False
        logger.info("cost table: %d entries in %s", len(merged), self.path)
        return self.path
