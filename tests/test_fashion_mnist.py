"""Fashion-MNIST as a data source (issue 20 item 4): gzip IDX files read from the folder
``$SURGERY_FASHION_MNIST_DIR`` names (tiny files written here: no package needed), the
official test split, the class names, and one clear line naming ``apt-get install
dataset-fashion-mnist`` when the files are missing or broken.
"""
import gzip
import os

import numpy as np
import pytest

from surgery import data_sources
from surgery.data import DataError, as_arrays, load_splits


def _idx(path, array, dtype_code=0x08):
    header = bytes([0, 0, dtype_code, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(">u1").tobytes())


def _write_fashion(folder, n_train=40, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
        images[:, 0, 0] = labels * 20  # each image carries its label in one pixel
        names = data_sources.FASHION_MNIST_FILES[split]
        _idx(os.path.join(folder, names[0]), images)
        _idx(os.path.join(folder, names[1]), labels)
        arrays[split] = (images, labels)
    return arrays


def test_load_splits_reads_the_idx_files_with_the_official_test_split(tmp_path, monkeypatch):
    arrays = _write_fashion(str(tmp_path))
    monkeypatch.setenv(data_sources.FASHION_MNIST_ENV, str(tmp_path))
    splits = load_splits("fashion_mnist", batch_size=8, val_fraction=0.25)
    assert splits.num_classes == 10 and splits.input_shape == (28, 28, 1)
    assert splits.class_names[0] == "T-shirt/top" and splits.class_names[9] == "Ankle boot"
    assert splits.sizes == {"train": 30, "val": 10, "test": 20}
    x, y = as_arrays(splits.test)
    pixels = x * splits.std + splits.mean  # undo the standardisation: back to [0, 1]
    images, labels = arrays["test"]
    assert np.array_equal(np.argmax(y, -1), labels)  # test split in file order, labels kept
    assert np.allclose(pixels[..., 0] * 255.0, images, atol=1e-3)


def test_missing_files_name_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv(data_sources.FASHION_MNIST_ENV, str(tmp_path / "empty"))
    with pytest.raises(DataError) as info:
        load_splits("fashion_mnist")
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message and "\n" not in message
    assert str(tmp_path / "empty") in message
    monkeypatch.delenv(data_sources.FASHION_MNIST_ENV)  # default: Debian's folder, then Keras's
    assert data_sources.fashion_mnist_dirs(str(tmp_path)) == [
        "/usr/share/datasets/fashion-mnist", str(tmp_path / "datasets" / "fashion-mnist")]


def test_broken_idx_files_are_named(tmp_path, monkeypatch):
    _write_fashion(str(tmp_path))
    monkeypatch.setenv(data_sources.FASHION_MNIST_ENV, str(tmp_path))
    bad = tmp_path / data_sources.FASHION_MNIST_FILES["train"][1]
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x08\x01\x00\x00\x00\x28" + b"\x01" * 10)  # says 40, holds 10
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: truncated"):
        load_splits("fashion_mnist")
    with gzip.open(bad, "wb") as f:
        f.write(b"PK\x03\x04 not idx")
    with pytest.raises(DataError, match="not an IDX file"):
        load_splits("fashion_mnist")


def test_the_cli_says_it_in_one_line(tmp_path, monkeypatch, capsys):
    from surgery.cli import prune

    monkeypatch.setenv(data_sources.FASHION_MNIST_ENV, str(tmp_path / "nowhere"))
    out = tmp_path / "run"
    assert prune.main(["--data", "fashion_mnist", "--model", "lenet5", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "apt-get install dataset-fashion-mnist" in err[0], err
    assert not out.exists()
