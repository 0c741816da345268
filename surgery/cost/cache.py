"""Cost tables on disk: measured seconds, keyed so that a stale table is never reused.

This module owns :class:`TableCache`: one JSON file per measuring *environment* — runtime
and its version (and the converter's), CPU features, threads and batch size — whose name is
a hash of that environment, so a table measured with another runtime version, on another
CPU, with other threads or another batch size is never found. The file has a versioned
schema (:data:`SCHEMA_VERSION`) of typed sections:

- ``tables``: micro-model signature (layer class, config without its name, input shape,
  output width) -> seconds;
- ``whole``: architecture digest -> seconds of the whole unpruned model;
- ``curves``: architecture digest -> ``[[depth, measured cut], ...]``, the latest
  :data:`MAX_CURVE_POINTS` timing checks of that architecture's latency plans
  (:mod:`surgery.calibration.curve` says what they mean);
- ``scales``: architecture digest -> ``{target: scale}``, the scale each target's plan kept.

A version-1 file (one flat ``entries`` map told apart by the key prefixes ``whole:``,
``landings:`` and ``scale:``) is migrated when read; a file of an unknown version, another
environment's, or one that is not JSON is ignored, and a malformed entry (a hand-edited
file) is skipped, each with a log line: a bad cache costs measuring time, never a crash.
The folder is ``$SURGERY_COST_CACHE`` when set, else ``$XDG_CACHE_HOME`` (or ``~/.cache``)
``/keras-surgery/cost``. Files are written atomically, and what this process changed is
applied to what another process saved meanwhile (its entries are kept, its curve points
too; a file of a newer schema is left alone).

>>> import tempfile
>>> folder = tempfile.mkdtemp()
>>> c = TableCache(dict(runtime="onnxruntime", threads=2, batch=1), folder)
>>> c.get("conv 8->16") is None, c.misses
(True, 1)
>>> c.put("conv 8->16", 0.001); c.add_point("arch", 0.5, 0.31); _ = c.save()
>>> again = TableCache(dict(runtime="onnxruntime", threads=2, batch=1), folder)
>>> again.get("conv 8->16"), again.curve("arch")
(0.001, ([(0.5, 0.31)], {}))
>>> TableCache(dict(runtime="onnxruntime", threads=4, batch=1), folder).get("conv 8->16")
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from typing import Dict, List, Mapping, Optional, Tuple

from surgery.atomic import write_atomically

logger = logging.getLogger(__name__)

#: environment variable naming the folder of the cost tables
ENV = "SURGERY_COST_CACHE"
#: the schema this module writes (version 1: one flat ``entries`` map with key prefixes)
SCHEMA_VERSION = 2
#: the typed sections of a version-2 file
SECTIONS = ("tables", "whole", "curves", "scales")
#: timing checks kept per architecture (the latest): enough to cover the targets a user
#: plans, few enough that an old machine state ages out
MAX_CURVE_POINTS = 40


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
    """Measured seconds, and the latency curves they were checked against, for one
    environment ``key`` (a JSON-able dict), in ``folder``."""

    def __init__(self, key: Mapping, folder: Optional[str] = None):
        self.key = dict(key)
        self.folder = folder or cache_dir()
        self.path = os.path.join(self.folder, f"{self.key.get('runtime', 'cost')}-"
                                              f"{digest(self.key)}.json")
        self.sections: Dict[str, dict] = self._read()[0] or _empty()
        self._changes: List[Tuple[str, object, object]] = []  # replayed on save
        self.hits = self.misses = 0

    def get(self, signature: str) -> Optional[float]:
        """The seconds of a micro-model (``tables``), or ``None`` (counted as a miss)."""
        value = self.sections["tables"].get(signature)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, signature: str, seconds: float) -> None:
        """Store the seconds of a micro-model."""
        self._change("tables", signature, float(seconds))

    def whole_time(self, architecture: str) -> Optional[float]:
        """The seconds of the whole unpruned model of ``architecture`` (a digest)."""
        return self.sections["whole"].get(architecture)

    def put_whole(self, architecture: str, seconds: float) -> None:
        self._change("whole", architecture, float(seconds))

    def curve(self, architecture: str) -> Tuple[List[Tuple[float, float]], Dict[str, float]]:
        """``(points, scales)`` of ``architecture``: its timing checks ``(depth, measured
        cut)``, oldest first, and ``{target: scale}`` its plans kept (copies)."""
        return ([tuple(p) for p in self.sections["curves"].get(architecture, [])],
                dict(self.sections["scales"].get(architecture, {})))

    def add_point(self, architecture: str, depth: float, cut: float) -> None:
        """Add a timing check to ``architecture``'s curve (the oldest past
        :data:`MAX_CURVE_POINTS` drop out)."""
        self._change("curves", architecture, [float(depth), float(cut)])

    def keep_scale(self, architecture: str, target: str, scale: float) -> None:
        """Remember the scale the plan for ``target`` (a key such as ``"0.400"``) kept."""
        self._change("scales", (architecture, str(target)), float(scale))

    def save(self) -> str:
        """Write the file: this process's changes applied to what is on disk now."""
        if not self._changes:
            return self.path
        stored, version = self._read()
        if isinstance(version, int) and version > SCHEMA_VERSION:
            logger.warning("%s was written by a newer keras-surgery (cost-cache schema %d); "
                           "left as it is", self.path, version)
            self._changes = []
            return self.path
        merged = stored or _empty()
        for change in self._changes:
            _apply(merged, *change)
        text = json.dumps(dict(version=SCHEMA_VERSION, key=self.key, **merged), sort_keys=True,
                          indent=0, default=str)

        def write(tmp: str) -> None:
            with open(tmp, "w") as f:
                f.write(text)

        write_atomically(self.path, write)
        self.sections, self._changes = merged, []
        logger.info("cost table: %d entries in %s", len(merged["tables"]), self.path)
        return self.path

    def _change(self, section: str, key, value) -> None:
        self._changes.append((section, key, value))
        _apply(self.sections, section, key, value)

    def _read(self) -> Tuple[Optional[Dict[str, dict]], object]:
        """The sections on disk (migrated, malformed entries skipped), or ``None`` where
        there are none to use; and the file's schema version (``None``: no file of ours)."""
        try:
            with open(self.path) as f:
                stored = json.load(f)
        except OSError:
            return None, None
        except ValueError as e:  # not JSON (or not text): measured again, and rewritten
            logger.info("%s is not a cost cache (%s); not reused", self.path, e)
            return None, None
        if not isinstance(stored, dict) or \
                stored.get("key") != json.loads(json.dumps(self.key, default=str)):
            logger.info("%s belongs to another environment; not reused", self.path)
            return None, None
        version = stored.get("version", 1)
        if version == 1:
            logger.info("%s: a version-1 cost cache, migrated", self.path)
            stored = _from_version_1(stored.get("entries"))
        elif version != SCHEMA_VERSION:
            logger.info("%s has cost-cache schema version %r (this one reads 1 and %d); "
                        "not reused", self.path, version, SCHEMA_VERSION)
            return None, version
        return _checked(stored, self.path), version


def _empty() -> Dict[str, dict]:
    return {name: {} for name in SECTIONS}


def _apply(sections: Dict[str, dict], section: str, key, value) -> None:
    """One change: a curve gains a point, a scale is set in its architecture, any other
    section's entry is set."""
    if section == "curves":
        points = sections["curves"].setdefault(key, [])
        points.append(value)
        del points[:-MAX_CURVE_POINTS]
    elif section == "scales":
        architecture, target = key
        sections["scales"].setdefault(architecture, {})[target] = value
    else:
        sections[section][key] = value


def _from_version_1(entries) -> dict:
    """A version-1 ``entries`` map in version-2 sections (left unchecked)."""
    sections = _empty()
    for key, value in (entries if isinstance(entries, dict) else {}).items():
        if key.startswith("whole:"):
            sections["whole"][key[len("whole:"):]] = value
        elif key.startswith("landings:"):
            sections["curves"][key[len("landings:"):]] = value
        elif key.startswith("scale:"):
            architecture, _, target = key[len("scale:"):].rpartition(":")
            sections["scales"].setdefault(architecture, {})[target] = value
        else:
            sections["tables"][key] = value
    return sections


def _seconds(value) -> Optional[float]:
    """A finite, non-negative number, else ``None``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and \
            math.isfinite(value) and value >= 0:
        return float(value)
    return None


def _point(value) -> Optional[list]:
    """``[depth, cut]``, two finite non-negative numbers, else ``None``."""
    if isinstance(value, list) and len(value) == 2:
        pair = [_seconds(v) for v in value]
        return pair if None not in pair else None
    return None


def _entry(section: str, value) -> Tuple[object, int]:
    """The well-formed part of one entry of ``section`` (``None``: nothing), and how many
    of its parts were malformed."""
    if section in ("tables", "whole"):
        kept = _seconds(value)
        return kept, int(kept is None)
    if section == "curves" and isinstance(value, list):
        kept = [p for p in map(_point, value) if p is not None]
    elif section == "scales" and isinstance(value, dict):
        kept = {t: float(s) for t, s in value.items() if _seconds(s)}  # a scale is > 0
    else:
        return None, 1
    return kept, len(value) - len(kept)


def _checked(stored: dict, path: str) -> Dict[str, dict]:
    """The well-formed part of each section of ``stored``; what is dropped is logged."""
    sections, dropped = _empty(), 0
    for name in SECTIONS:
        section = stored.get(name, {})
        if not isinstance(section, dict):
            dropped += 1
            continue
        for key, value in section.items():
            kept, bad = _entry(name, value)
            dropped += bad
            if kept is not None:
                sections[name][key] = kept
    if dropped:
        logger.info("%s: skipped %d malformed cost-cache entries", path, dropped)
    return sections
