"""Input pipelines: splits, preprocessing, every source kind, and every bad-input error."""
import os

import numpy as np
import pytest

from surgery import tf
from data_generator import (DataError, Splits, as_arrays, load_splits,
                            representative_dataset, split_indices)

DIGITS = 1797


@pytest.fixture(scope="module")
def digits():
    return load_splits("digits", seed=0)


def write_npy(folder, x, y):
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, "image_array.npy"), x)
    np.save(os.path.join(folder, "label_one_hot.npy"), y)
    return str(folder)


def write_png(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(path, tf.io.encode_png(image))


def unstandardise(splits, x):
    return x * splits.std + splits.mean


# ----------------------------------------------------------------------------- digits


def test_digits_split_sizes_and_batches(digits):
    assert isinstance(digits, Splits)
    assert sum(digits.sizes.values()) == DIGITS
    assert digits.sizes == {"train": 1259, "val": 179, "test": 359}
    assert digits.num_classes == 10 and digits.input_shape == (8, 8, 1)
    assert digits.class_names == [str(i) for i in range(10)]
    for name in ("train", "val", "test"):
        x, y = as_arrays(getattr(digits, name))
        assert len(x) == digits.sizes[name]
        assert x.shape[1:] == (8, 8, 1) and x.dtype == np.float32
        assert y.shape[1:] == (10,) and y.dtype == np.float32
        np.testing.assert_array_equal(y.sum(axis=1), 1.0)
    xb, yb = next(iter(digits.train))
    assert xb.shape == (32, 8, 8, 1) and yb.shape == (32, 10)


def test_split_indices_disjoint_stratified_and_deterministic():
    labels = np.repeat(np.arange(10), 50)
    train, val, test = split_indices(labels, 0.1, 0.2, seed=3)
    assert len(train) + len(val) + len(test) == len(labels)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert np.array_equal(np.bincount(labels[test]), np.full(10, 10))
    assert np.array_equal(np.bincount(labels[val]), np.full(10, 5))
    again = split_indices(labels, 0.1, 0.2, seed=3)
    other = split_indices(labels, 0.1, 0.2, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    assert not np.array_equal(test, other[2])


def test_digits_split_deterministic_per_seed(digits):
    same = load_splits("digits", seed=0)
    other = load_splits("digits", seed=1)
    x0, _ = as_arrays(digits.test)
    np.testing.assert_array_equal(x0, as_arrays(same.test)[0])
    assert x0.shape == as_arrays(other.test)[0].shape
    assert not np.array_equal(x0, as_arrays(other.test)[0])


def test_train_is_standardised(digits):
    x, _ = as_arrays(digits.train)
    assert abs(x.mean()) < 1e-4
    assert x.std() == pytest.approx(1.0, abs=1e-3)
    xt, _ = as_arrays(digits.test)
    assert abs(xt.mean()) < 0.1  # the test split uses the training statistics


def test_resize_and_channels():
    splits = load_splits("digits", image_size=(32, 24), channels=3, batch_size=16,
                         val_fraction=0.0, test_fraction=0.5)
    assert splits.input_shape == (32, 24, 3)
    assert splits.sizes["val"] == 0
    x, y = as_arrays(splits.train)
    assert x.shape[1:] == (32, 24, 3)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])  # grey copied to RGB
    np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    assert as_arrays(splits.val)[0].shape == (0, 32, 24, 3)


def test_augment_changes_train_only():
    plain = load_splits("digits", image_size=(16, 16), seed=5)
    aug = load_splits("digits", image_size=(16, 16), seed=5, augment=True)
    np.testing.assert_array_equal(as_arrays(plain.val)[0], as_arrays(aug.val)[0])
    xa, ya = as_arrays(aug.train)
    xp, _ = as_arrays(plain.train)
    assert xa.shape == xp.shape and len(ya) == len(xa)
    assert not np.allclose(np.sort(xa.ravel()), np.sort(xp.ravel()))


def test_representative_dataset(digits):
    samples = list(representative_dataset(digits, n=5))
    assert len(samples) == 5
    assert all(s[0].shape == (1, 8, 8, 1) and s[0].dtype == np.float32 for s in samples)
    only_x = digits.test.map(lambda x, y: x)
    assert len(list(representative_dataset(only_x, n=3))) == 3


def test_as_arrays_limit(digits):
    x, y = as_arrays(digits.test, limit=40)
    assert x.shape == (40, 8, 8, 1) and y.shape == (40, 10)


# ----------------------------------------------------------------------------- npy folder


@pytest.mark.parametrize("one_hot", [True, False])
def test_npy_folder_round_trip(tmp_path, one_hot):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(60, 10, 10), dtype=np.uint8)
    labels = np.arange(60) % 3
    y = np.eye(3, dtype=np.float32)[labels] if one_hot else labels
    folder = write_npy(tmp_path / "npy", x, y)
    splits = load_splits(folder, seed=2)
    assert splits.num_classes == 3 and splits.input_shape == (10, 10, 1)
    assert sum(splits.sizes.values()) == 60
    _, _, test_idx = split_indices(labels, 0.1, 0.2, seed=2)
    xt, yt = as_arrays(splits.test)
    lo, hi = x.min(), x.max()
    expected = (x[test_idx].astype(np.float32) - lo) / (hi - lo)
    np.testing.assert_allclose(unstandardise(splits, xt)[..., 0], expected, atol=1e-5)
    np.testing.assert_array_equal(yt.argmax(axis=1), labels[test_idx])


def test_array_tuple_source_rgb_to_grey():
    x = np.random.default_rng(1).random((20, 8, 8, 3)).astype(np.float32)
    splits = load_splits((x, np.arange(20) % 2), channels=1, test_fraction=0.5)
    assert splits.input_shape == (8, 8, 1)
    assert as_arrays(splits.test)[0].shape == (10, 8, 8, 1)


# ----------------------------------------------------------------------------- image folders


def test_class_subfolders_of_pngs(tmp_path):
    names = ["cat", "dog", "emu"]
    for label, name in enumerate(names):
        for i in range(5):
            image = np.full((12, 10, 1), 40 + 80 * label + i, dtype=np.uint8)
            write_png(str(tmp_path / "imgs" / name / f"{i}.png"), image)
    (tmp_path / "imgs" / "dog" / "notes.txt").write_text("not an image")
    splits = load_splits(str(tmp_path / "imgs"), image_size=(6, 6), channels=3,
                         val_fraction=0.0, test_fraction=0.4)
    assert splits.class_names == names and splits.num_classes == 3
    assert splits.input_shape == (6, 6, 3) and splits.sizes == {"train": 9, "val": 0,
                                                                   "test": 6}
    x, y = as_arrays(splits.test)
    brightness = unstandardise(splits, x).mean(axis=(1, 2, 3))
    order = np.argsort(brightness)
    assert list(y.argmax(axis=1)[order]) == [0, 0, 1, 1, 2, 2]


def test_mixed_sizes_need_image_size(tmp_path):
    write_png(str(tmp_path / "a" / "0.png"), np.zeros((8, 8, 3), np.uint8))
    write_png(str(tmp_path / "b" / "0.png"), np.full((10, 6, 1), 255, np.uint8))
    with pytest.raises(DataError, match="different sizes.*image_size"):
        load_splits(str(tmp_path), test_fraction=0.0, val_fraction=0.0)
    splits = load_splits(str(tmp_path), image_size=(8, 8), test_fraction=0.0,
                         val_fraction=0.0)
    assert splits.input_shape == (8, 8, 3)


def test_unreadable_image(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        load_splits(str(tmp_path))


# ----------------------------------------------------------------------------- errors


def bad_npy(tmp_path, x, y):
    return write_npy(tmp_path / "bad", np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("x,y,message", [
    (np.zeros((10, 8, 8)), np.zeros(9, int), "10 images but 9 labels"),
    (np.zeros((10, 64)), np.zeros(10, int), r"must have shape \(N, H, W\)"),
    (np.zeros((10, 8, 8, 2)), np.zeros(10, int), "1, 3 or 4 channels"),
    (np.zeros((10, 8, 8)), np.zeros((10, 2, 2)), "labels must be one-hot"),
    (np.zeros((10, 8, 8)), np.full((10, 3), 0.5), "must be one-hot"),
    (np.zeros((10, 8, 8)), np.ones((10, 3)), "must be one-hot"),
    (np.zeros((10, 8, 8)), -np.ones(10, int), "labels out of range"),
    (np.zeros((10, 8, 8)), np.full(10, 0.5), "whole numbers"),
    (np.full((10, 8, 8), np.nan), np.zeros(10, int), "NaN"),
    (np.zeros((0, 8, 8)), np.zeros(0, int), "no images"),
])
def test_bad_arrays(tmp_path, x, y, message):
    with pytest.raises(DataError, match=message):
        load_splits(bad_npy(tmp_path, x, y))


def test_npy_class_names_file(tmp_path):
    folder = write_npy(tmp_path / "named", np.zeros((6, 8, 8)), np.array([0, 1, 2] * 2))
    with open(os.path.join(folder, "class_names.txt"), "w") as f:
        f.write("ant\nbee\ncow\ndeer\n")
    splits = load_splits(folder, val_fraction=0.0, test_fraction=0.0)
    assert splits.class_names == ["ant", "bee", "cow", "deer"] and splits.num_classes == 4
    np.save(os.path.join(folder, "label_one_hot.npy"), np.array([0, 1, 2, 3, 4, 0]))
    with pytest.raises(DataError, match="labels out of range: found 4, but there are 4"):
        load_splits(folder)
    np.save(os.path.join(folder, "label_one_hot.npy"), np.eye(3)[[0, 1, 2] * 2])
    with pytest.raises(DataError, match="4 class names but one-hot labels have 3"):
        load_splits(folder)


def test_missing_labels_file(tmp_path):
    folder = tmp_path / "half"
    folder.mkdir()
    np.save(folder / "image_array.npy", np.zeros((4, 8, 8)))
    with pytest.raises(DataError, match="missing label_one_hot.npy"):
        load_splits(str(folder))


def test_empty_folder(tmp_path):
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_splits(str(tmp_path))


def test_unknown_source_and_file_source(tmp_path):
    with pytest.raises(DataError, match="unknown source 'imagenet'.*digits, mnist"):
        load_splits("imagenet")
    path = tmp_path / "file.npy"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="must be a folder"):
        load_splits(str(path))


def test_keras_dataset_offline_is_one_clear_line(tmp_path):
    try:
        load_splits("mnist", cache_dir=str(tmp_path))
    except DataError as error:
        message = str(error)
    else:
        pytest.skip("mnist was downloadable here")
    assert message.startswith("mnist is not cached in ") and "\n" not in message
    assert "source='digits'" in message


@pytest.mark.parametrize("kwargs,message", [
    (dict(channels=2), "channels must be 1, 3"),
    (dict(image_size=(8,)), "image_size must be"),
    (dict(batch_size=0), "batch_size"),
    (dict(val_fraction=0.5, test_fraction=0.5), "sum to less than 1"),
    (dict(test_fraction=-0.1), "must be in"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(DataError, match=message):
        load_splits("digits", **kwargs)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)
