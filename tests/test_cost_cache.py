"""The cost cache's file: a versioned schema of typed sections (``surgery.cost.cache``).

A version-1 file is migrated, a file of another version or environment, or one that is not
JSON, is ignored, and a hand-edited entry that is malformed is skipped, each with a log line
and never a crash; saving applies this process's changes to what another process saved.
"""
import json
import logging
import os

import pytest

from surgery.cost.cache import MAX_CURVE_POINTS, SCHEMA_VERSION, TableCache

KEY = dict(runtime="onnxruntime", version="ort 1.0", cpu=["avx2"], threads=2, batch=1)


def _write(folder, content):
    """Write ``content`` (JSON-able, or a str written as is) as the file of :data:`KEY`."""
    path = TableCache(KEY, str(folder)).path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(content if isinstance(content, str) else json.dumps(content))
    return path


def test_a_version_1_file_is_migrated_into_typed_sections(tmp_path, caplog):
    entries = {
        "Conv2D:[8, 8, 3]->16:": 0.002,
        "whole:arch1": 0.05,
        "landings:arch1": [[0.4, 0.3], [0.6, 0.45], [0.5], "x"],  # two hand-edited points
        "scale:arch1:0.400": 0.8,
        "scale:arch1:0.300": "fast",  # hand-edited: skipped
        "Dense:[16]->4:": None,  # hand-edited: skipped
    }
    path = _write(tmp_path, dict(key=KEY, entries=entries))
    with caplog.at_level(logging.INFO, logger="surgery.cost.cache"):
        c = TableCache(KEY, str(tmp_path))
    assert "version-1" in caplog.text and "skipped 4 malformed" in caplog.text
    assert c.get("Conv2D:[8, 8, 3]->16:") == 0.002 and c.get("Dense:[16]->4:") is None
    assert c.whole_time("arch1") == 0.05 and c.whole_time("arch2") is None
    assert c.curve("arch1") == ([(0.4, 0.3), (0.6, 0.45)], {"0.400": 0.8})
    assert c.curve("arch2") == ([], {})
    c.add_point("arch1", 0.7, 0.5)
    c.save()
    stored = json.loads(open(path).read())
    assert stored["version"] == SCHEMA_VERSION and "entries" not in stored
    assert stored["key"] == KEY
    assert stored["tables"] == {"Conv2D:[8, 8, 3]->16:": 0.002}
    assert stored["whole"] == {"arch1": 0.05}
    assert stored["curves"] == {"arch1": [[0.4, 0.3], [0.6, 0.45], [0.7, 0.5]]}
    assert stored["scales"] == {"arch1": {"0.400": 0.8}}


@pytest.mark.parametrize("content, logged", [
    ("{not json", "is not a cost cache"),
    ("\udcff", "is not a cost cache"),
    ([1, 2, 3], "another environment"),
    (dict(version=2, tables={"a": 1.0}), "another environment"),  # no key
    (dict(version="two", key=KEY, tables={"a": 1.0}), "schema version 'two'"),
    (dict(version=2, key=KEY, tables=[1.0], whole="x", curves={"arch": 5},
          scales={"arch": [0.5]}), "skipped 4 malformed"),
    (dict(version=2, key=KEY, tables={"a": -1.0, "b": float("nan"), "c": True},
          curves={"arch": [[0.5, 0.2], [0.5, "x"], [-1, 0.2]]},
          scales={"arch": {"0.400": 0.0, "0.500": -2}}), "skipped 7 malformed"),
])
def test_a_hand_edited_or_foreign_file_is_ignored_or_skipped_never_a_crash(
        tmp_path, caplog, content, logged):
    if content == "\udcff":  # bytes that are not UTF-8
        path = _write(tmp_path, "")
        open(path, "wb").write(b"\xff\xfe\x00garbage")
    else:
        _write(tmp_path, content)
    with caplog.at_level(logging.INFO, logger="surgery.cost.cache"):
        c = TableCache(KEY, str(tmp_path))
    assert logged in caplog.text
    for name in ("a", "b", "c"):
        assert c.get(name) is None
    assert c.whole_time("x") is None
    points, scales = c.curve("arch")
    assert scales == {} and points in ([], [(0.5, 0.2)])
    c.put("a", 1.5)  # and it is written over with a well-formed file
    c.save()
    again = TableCache(KEY, str(tmp_path))
    assert again.get("a") == 1.5 and again.curve("arch") == c.curve("arch")


def test_a_file_of_a_newer_schema_is_not_read_nor_written_over(tmp_path, caplog):
    newer = dict(version=SCHEMA_VERSION + 1, key=KEY, tables={"a": {"p50": 1.0}})
    path = _write(tmp_path, newer)
    with caplog.at_level(logging.INFO, logger="surgery.cost.cache"):
        c = TableCache(KEY, str(tmp_path))
        assert c.get("a") is None
        c.put("a", 2.0)
        c.save()
    assert "schema version 3" in caplog.text and "left as it is" in caplog.text
    assert json.loads(open(path).read()) == newer


def test_saving_applies_this_process_changes_to_what_another_saved(tmp_path):
    """Two processes read the same file, change it, and save in turn: every table entry,
    whole time and scale of both is kept (the later one wins where both set one), and both
    processes' checks are points of the curve, the oldest dropping out past the limit."""
    first, second = TableCache(KEY, str(tmp_path)), TableCache(KEY, str(tmp_path))
    first.put("a", 1.0)
    first.put("shared", 1.0)
    first.put_whole("arch", 0.5)
    first.add_point("arch", 0.4, 0.3)
    first.keep_scale("arch", "0.300", 0.9)
    second.put("b", 2.0)
    second.put("shared", 2.0)
    second.add_point("arch", 0.6, 0.5)
    second.keep_scale("arch", "0.500", 0.7)
    first.save()
    second.save()
    merged = TableCache(KEY, str(tmp_path))
    assert [merged.get(k) for k in ("a", "b", "shared")] == [1.0, 2.0, 2.0]
    assert merged.whole_time("arch") == 0.5
    assert merged.curve("arch") == ([(0.4, 0.3), (0.6, 0.5)], {"0.300": 0.9, "0.500": 0.7})
    assert second.curve("arch") == merged.curve("arch")  # a save reads the other's too
    for k in range(MAX_CURVE_POINTS):
        merged.add_point("arch", 1.0 + k, 0.5)
    merged.save()
    points = TableCache(KEY, str(tmp_path)).curve("arch")[0]
    assert len(points) == MAX_CURVE_POINTS and points[0] == (1.0, 0.5)
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []  # written atomically


def test_nothing_changed_writes_nothing(tmp_path):
    c = TableCache(KEY, str(tmp_path))
    assert c.get("a") is None and c.misses == 1
    c.save()
    assert not os.path.exists(c.path)
