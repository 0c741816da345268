"""TFLite export: float32 equivalence, dynamic/int8 quantisation, atomic writes, size table;
ONNX export of tf-keras models checked with ONNX Runtime (Keras 3: test_keras3_export.py)."""
import gzip
import os
import sys

import numpy as np
import pytest

import surgery
from surgery import keras
from surgery.export import onnx as onnx_export
from surgery.pipeline.export import (evaluate_tflite, export_onnx, export_tflite, onnx_predict,
                                     size_table, size_table_markdown, tflite_input_dtype,
                                     tflite_predict, write_atomically)
import data_generator
import models


@pytest.fixture(autouse=True)
def _fresh_keras_session():  # the module fixture's model must outlive each test
    yield


def train_lenet(size=16, epochs=3):
    """LeNet-5 trained for a few epochs on 16x16 digits (about 90% test accuracy)."""
    keras.backend.clear_session()
    splits = data_generator.load_splits("digits", image_size=(size, size), channels=1,
                                        batch_size=32)
    keras.utils.set_random_seed(0)
    model = models.get_model("lenet5", input_shape=(size, size, 1), classes=10)
    model.compile(keras.optimizers.Adam(3e-3), "categorical_crossentropy")
    model.fit(splits.train, epochs=epochs, verbose=0)
    return model, splits


@pytest.fixture(scope="module")
def trained():
    model, splits = train_lenet()
    x, y = data_generator.as_arrays(splits.test)
    return model, splits, x, y


def keras_accuracy(model, x, y):
    return float(np.mean(model.predict(x, verbose=0).argmax(-1) == y.argmax(-1)))


def test_float32_tflite_matches_keras_on_digits(trained, tmp_path, capsys, monkeypatch):
    model, splits, x, y = trained
    path = export_tflite(model, str(tmp_path / "lenet.tflite"))
    assert path == str(tmp_path / "lenet.tflite") and os.listdir(tmp_path) == ["lenet.tflite"]
    assert tflite_input_dtype(path) == np.float32
    assert len(x) > 300
    # bars show only on a terminal (surgery.progress): let captured stderr pose as one
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    out = tflite_predict(path, x, progress=True)
    assert "tflite" in capsys.readouterr().err  # a tqdm bar for > 300 examples
    assert out.shape == (len(x), 10) and out.dtype == np.float32
    assert np.abs(out - model.predict(x, verbose=0)).max() <= 1e-4
    accuracy = evaluate_tflite(path, splits.test, progress=False)
    assert accuracy == pytest.approx(keras_accuracy(model, x, y), abs=1.5 / len(x))
    assert accuracy > 0.7


def test_float32_tflite_of_a_pruned_mobilenet_matches_keras(tmp_path):
    splits = data_generator.load_splits("digits", image_size=(32, 32), channels=1)
    x, _ = data_generator.as_arrays(splits.test, limit=32)
    model = models.get_model("mobilenet_v2", input_shape=(32, 32, 1), classes=10, alpha=0.35)
    smaller = surgery.prune(model, ratio=0.3)
    path = export_tflite(smaller, str(tmp_path / "sub" / "mobilenet.tflite"))
    out = tflite_predict(path, x, progress=False)
    assert np.abs(out - smaller.predict(x, verbose=0)).max() <= 1e-4


def test_dynamic_and_int8_exports_beat_chance(trained, tmp_path):
    model, splits, x, y = trained
    baseline = keras_accuracy(model, x, y)
    dynamic = export_tflite(model, str(tmp_path / "dynamic.tflite"), quantize="dynamic")
    assert tflite_input_dtype(dynamic) == np.float32
    assert evaluate_tflite(dynamic, (x, y), progress=False) >= baseline - 0.05

    int8 = export_tflite(model, str(tmp_path / "int8.tflite"), quantize="int8",
                         representative_data=splits.train)  # a dataset of (x, y) batches
    assert tflite_input_dtype(int8) == np.int8
    out = tflite_predict(int8, x[:50], progress=False)
    assert out.dtype == np.float32 and np.all(out >= -0.01) and np.all(out <= 1.01)
    assert evaluate_tflite(int8, splits.test, progress=False) >= max(0.6, baseline - 0.1)

    from_array = export_tflite(model, str(tmp_path / "int8_array.tflite"), quantize="int8",
                               representative_data=x[:64], calibration_examples=32)
    assert tflite_input_dtype(from_array) == np.int8
    assert evaluate_tflite(from_array, (x, y), progress=False) > 0.5


def test_bad_quantize_arguments_raise_before_converting(trained, tmp_path):
    model = trained[0]
    with pytest.raises(ValueError, match="representative_data"):
        export_tflite(model, str(tmp_path / "m.tflite"), quantize="int8")
    with pytest.raises(ValueError, match="quantize must be one of"):
        export_tflite(model, str(tmp_path / "m.tflite"), quantize="float16")
    assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        tflite_predict(str(tmp_path / "missing.tflite"), np.zeros((1, 16, 16, 1), "float32"))


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def failing(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomically(str(target), failing)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]
    write_atomically(str(target), lambda tmp: open(tmp, "wb").write(b"new"))
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["out.bin"]


def test_size_table_reports_real_gzip_sizes_and_pruning_shrinks_the_file(trained, tmp_path):
    model = trained[0]
    entries = {
        "baseline": export_tflite(model, str(tmp_path / "base.tflite")),
        "pruned": export_tflite(surgery.prune(model, ratio=0.5), str(tmp_path / "p.tflite")),
    }
    entries["pruned + quantized"] = export_tflite(
        surgery.prune(model, ratio=0.5), str(tmp_path / "pq.tflite"), quantize="dynamic")
    rows = size_table(entries)
    assert [r["label"] for r in rows] == list(entries)
    for row in rows:
        data = open(row["path"], "rb").read()
        assert row["bytes"] == len(data) == os.path.getsize(row["path"])
        assert row["gzip_bytes"] == len(gzip.compress(data))
    base, pruned, quantized = rows
    assert pruned["bytes"] < base["bytes"] and pruned["gzip_bytes"] < base["gzip_bytes"]
    assert quantized["gzip_bytes"] < pruned["gzip_bytes"]
    assert base["relative"] == 1.0 and 0 < quantized["relative"] < pruned["relative"] < 1
    table = size_table_markdown(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows) and lines[0].startswith("| model |")
    assert all(label in table for label in entries) and str(base["gzip_bytes"]) in table
    with pytest.raises(FileNotFoundError, match="nowhere"):
        size_table({"nowhere": str(tmp_path / "nowhere.tflite")})


def randomize(model, seed=0):
    """Random BatchNormalization statistics and biases, so outputs are far from zero and a
    wrong cut, a wrong export or training-mode normalisation shows."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") if i in (0, 3)
                               else rng.normal(0, 0.2, w.shape).astype("float32")
                               for i, w in enumerate(weights)])
        elif len(weights) > 1:
            layer.set_weights(weights[:1] + [rng.normal(0, 0.1, w.shape).astype("float32")
                                             for w in weights[1:]])
    return model


def test_onnx_of_a_pruned_keras2_mobilenet_matches_keras(tmp_path):
    keras.utils.set_random_seed(0)
    model = randomize(keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=5,
        classifier_activation=None))
    pruned = surgery.apply(model, surgery.plan(model, ratio=0.3))
    x = np.random.default_rng(1).normal(size=(8, 32, 32, 3)).astype(np.float32)
    expected = pruned.predict(x, verbose=0)
    assert np.abs(expected).max() > 0.1
    assert np.abs(model.predict(x, verbose=0) - expected).max() > 1e-2  # the test can fail

    path = surgery.export_onnx(pruned, str(tmp_path / "sub" / "pruned.onnx"), verify_with=x[:4])
    assert path == str(tmp_path / "sub" / "pruned.onnx")
    assert os.listdir(tmp_path / "sub") == ["pruned.onnx"]
    out = surgery.onnx_predict(path, x)
    assert out.shape == expected.shape and out.dtype == np.float32
    assert np.abs(out - expected).max() <= 1e-4
    assert np.array_equal(onnx_predict(path, x, batch_size=3), out)  # batched runs agree


def test_export_onnx_refuses_drift_and_bad_arguments(tmp_path, monkeypatch):
    x_in = keras.Input((3,))
    tiny = keras.Model(x_in, keras.layers.Dense(2)(x_in))
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    real = onnx_export.onnx_predict
    monkeypatch.setattr(onnx_export, "onnx_predict",
                        lambda path, data, **kw: real(path, data, **kw) + 2e-4)
    with pytest.raises(surgery.SurgeryError, match=r"verify_with=.*atol=0.0001"):
        export_onnx(tiny, str(tmp_path / "drift.onnx"), verify_with=x)
    assert os.listdir(tmp_path) == []  # nothing published, no temporary file left
    path = export_onnx(tiny, str(tmp_path / "loose.onnx"), verify_with=x, atol=1e-3)
    monkeypatch.undo()
    assert np.abs(onnx_predict(path, x) - tiny.predict(x, verbose=0)).max() <= 1e-4
    with pytest.raises(surgery.SurgeryError, match="takes 1 inputs"):
        onnx_predict(path, [x, x])
    with pytest.raises(surgery.SurgeryError, match="atol"):
        export_onnx(tiny, str(tmp_path / "m.onnx"), atol=-1)
    with pytest.raises(FileNotFoundError, match="export_onnx"):
        onnx_predict(str(tmp_path / "missing.onnx"), x)
    with pytest.raises(surgery.SurgeryError, match="keras.Model"):
        export_onnx(object(), str(tmp_path / "m.onnx"))
