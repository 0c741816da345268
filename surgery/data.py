"""Input pipelines: this module owns turning a data source into batched ``tf.data`` splits.

A source (read by :mod:`surgery.data_sources`) is the built-in ``"digits"`` set
(scikit-learn's 1,797 8x8 digit images, no network needed), ``"fashion_mnist"`` (Debian's
``dataset-fashion-mnist`` files or Keras's cache, offline), a ``keras.datasets`` name
(``"mnist"``, ``"cifar10"``, ``"cifar100"``), a folder holding ``image_array.npy`` +
``label_one_hot.npy`` (the seed project's format; an optional ``class_names.txt`` names the
classes, one per line), a folder of class subfolders of PNG/JPEG images, or an ``(x, y)``
tuple of arrays. The source is validated (bad input raises :class:`DataError` with one
clear line), split into fixed seeded stratified train/val/test parts, scaled to [0, 1] per
dataset, converted to the requested channels and size, standardised with the training
split's per-channel mean and std, optionally augmented (train only), and served as
``(x, y_onehot)`` float32 batches.
It also provides the representative-dataset generator for TFLite int8 calibration and a
small helper to pull a dataset back into numpy arrays.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple, Union

import numpy as np

from surgery._backend import tf
from surgery.data_sources import (BUILTIN_SOURCES, KERAS_DATASETS, DataError,  # noqa: F401
                                  Source, load_source)

logger = logging.getLogger(__name__)

_STATS_CHUNK = 1024


@dataclass
class Splits:
    """The three batched splits of one data source and what a model needs to know about it.

    ``train``/``val``/``test`` yield ``(x, y_onehot)`` float32 batches; ``x`` has shape
    ``(batch,) + input_shape``. ``mean``/``std`` are the per-channel training statistics
    used for standardisation; ``sizes`` the number of examples in each split.
    """

    train: tf.data.Dataset
    val: tf.data.Dataset
    test: tf.data.Dataset
    num_classes: int
    input_shape: tuple
    class_names: List[str]
    mean: np.ndarray = field(default=None, repr=False)
    std: np.ndarray = field(default=None, repr=False)
    sizes: dict = field(default_factory=dict)



# ----------------------------------------------------------------------------- splitting


def split_indices(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded stratified split of ``range(len(labels))`` into train/val/test index arrays.

    Each class contributes ``round(n_class * fraction)`` examples to val and test; the
    same labels and seed always give the same split.

    Example:
        >>> tr, va, te = split_indices(np.repeat([0, 1], 10), 0.1, 0.2, seed=0)
        >>> len(tr), len(va), len(te)
        (14, 2, 4)
    """
    _check_fractions(val_fraction, test_fraction)
    rng = np.random.default_rng(seed)
    parts: List[List[np.ndarray]] = [[], [], []]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(len(idx) * test_fraction))
        n_val = int(round(len(idx) * val_fraction))
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test:n_test + n_val])
        parts[0].append(idx[n_test + n_val:])
    return tuple(rng.permutation(np.concatenate(p)).astype(np.int64) for p in parts)


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1
            and val_fraction + test_fraction < 1):
        raise DataError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in "
            f"[0, 1) and sum to less than 1"
        )


# ----------------------------------------------------------------------------- transforms


def _transform(x: tf.Tensor, lo: float, scale: float, channels: int,
               image_size: Optional[Tuple[int, int]]) -> tf.Tensor:
    """Scale raw images (N, H, W, C) to [0, 1], convert channels and resize."""
    x = (tf.cast(x, tf.float32) - lo) * scale
    if x.shape[-1] == 3 and channels == 1:
        x = tf.image.rgb_to_grayscale(x)
    elif x.shape[-1] == 1 and channels == 3:
        x = tf.image.grayscale_to_rgb(x)
    if image_size is not None and tuple(x.shape[1:3]) != tuple(image_size):
        x = tf.image.resize(x, image_size, method="bilinear")
    return x


def _channel_stats(x: np.ndarray, transform) -> Tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of ``transform(x)``, computed in chunks (float64)."""
    total = total_sq = 0.0
    count = 0
    for start in range(0, len(x), _STATS_CHUNK):
        chunk = transform(x[start:start + _STATS_CHUNK]).numpy().astype(np.float64)
        total = total + chunk.sum(axis=(0, 1, 2))
        total_sq = total_sq + np.square(chunk).sum(axis=(0, 1, 2))
        count += chunk.shape[0] * chunk.shape[1] * chunk.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def _augment(image: tf.Tensor, seed: int) -> tf.Tensor:
    """Pad 4 pixels (with zeros = the training mean), random-crop back, random h-flip."""
    height, width, channels = image.shape
    image = tf.image.pad_to_bounding_box(image, 4, 4, height + 8, width + 8)
    image = tf.image.random_crop(image, (height, width, channels), seed=seed)
    return tf.image.random_flip_left_right(image, seed=seed)


def _make_dataset(x, y, num_classes, preprocess, batch_size, *, shuffle=False,
                  augment=False, seed=0) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(min(len(x), 10_000), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda xb, yb: (preprocess(xb), tf.one_hot(yb, num_classes)),
                num_parallel_calls=tf.data.AUTOTUNE)
    if augment:
        ds = ds.unbatch().map(lambda xi, yi: (_augment(xi, seed), yi),
                              num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------- public API


def load_splits(
    source: Source = "digits",
    *,
    image_size: Optional[Tuple[int, int]] = None,
    channels: Optional[int] = None,
    batch_size: int = 32,
    augment: bool = False,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    cache_dir: Optional[str] = None,
) -> Splits:
    """Load ``source`` and return seeded, standardised, batched train/val/test splits.

    Args:
        source: ``"digits"`` (built in, offline), ``"fashion_mnist"`` (Debian's
            ``dataset-fashion-mnist`` files, Keras's cache or ``$SURGERY_FASHION_MNIST_DIR``),
            ``"mnist"``, ``"cifar10"``, ``"cifar100"`` (``keras.datasets``; for these and
            Fashion-MNIST the official test split is the test split and ``test_fraction``
            is ignored), a folder with ``image_array.npy`` +
            ``label_one_hot.npy`` (one-hot or integer labels), a folder of class
            subfolders of images, or an ``(x, y)`` tuple of arrays.
        image_size: ``(height, width)`` to resize to (bilinear); default keeps the size.
        channels: 1 or 3 to convert grayscale <-> RGB; default keeps the channels.
        batch_size: examples per batch.
        augment: random pad-4 crop and horizontal flip on the training split only.
        seed: fixes the split, the shuffle order and the augmentation.
        val_fraction, test_fraction: per-class fractions held out for val and test.
        cache_dir: where ``keras.datasets`` files are cached (default ``~/.keras``).

    Raises:
        DataError: the source is unknown, missing, unreadable or malformed.

    Example:
        >>> splits = load_splits("digits", image_size=(32, 32), batch_size=64)
        >>> splits.num_classes, splits.input_shape
        (10, (32, 32, 1))
    """
    image_size = _checked_options(image_size, channels, batch_size, val_fraction,
                                  test_fraction)
    raw = load_source(source, image_size, cache_dir)
    train_idx, val_idx, (test_x, test_y) = _split(raw, val_fraction, test_fraction, seed)
    out_channels = channels or raw.x.shape[-1]
    train_x = raw.x[train_idx]
    preprocess, mean, std = _standardisation(raw, train_x, out_channels, image_size)

    num_classes = len(raw.class_names)
    batch_size = int(batch_size)
    train = _make_dataset(train_x, raw.y[train_idx], num_classes, preprocess, batch_size,
                          shuffle=True, augment=augment, seed=seed)
    val = _make_dataset(raw.x[val_idx], raw.y[val_idx], num_classes, preprocess, batch_size)
    test = _make_dataset(test_x, test_y, num_classes, preprocess, batch_size)
    input_shape = tuple(image_size or raw.x.shape[1:3]) + (out_channels,)
    sizes = {"train": len(train_idx), "val": len(val_idx), "test": len(test_x)}
    logger.info("data %s: %s, input %s, %d classes", source if isinstance(source, str)
                else "arrays", sizes, input_shape, num_classes)
    return Splits(train, val, test, num_classes, input_shape, raw.class_names,
                  mean=mean, std=std, sizes=sizes)


def _checked_options(image_size, channels, batch_size, val_fraction: float,
                     test_fraction: float) -> Optional[Tuple[int, int]]:
    """:func:`load_splits`'s options checked (:class:`DataError`); ``image_size`` as ints."""
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1, 3 or None, got {channels!r}")
    if image_size is not None:
        image_size = tuple(int(s) for s in image_size)
        if len(image_size) != 2 or min(image_size) < 1:
            raise DataError(f"image_size must be (height, width), got {image_size}")
    if int(batch_size) < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    _check_fractions(val_fraction, test_fraction)
    return image_size


def _split(raw, val_fraction: float, test_fraction: float, seed: int):
    """Train and validation indices into ``raw``, and the test ``(x, y)``: the source's own
    test split when it has one, else a seeded stratified part of it."""
    if raw.test_x is None:
        train_idx, val_idx, test_idx = split_indices(raw.y, val_fraction, test_fraction, seed)
        test = (raw.x[test_idx], raw.y[test_idx])
    else:
        train_idx, val_idx, _ = split_indices(raw.y, val_fraction, 0.0, seed)
        test = (raw.test_x, raw.test_y)
    if len(train_idx) == 0:
        raise DataError("the training split is empty; lower val_fraction/test_fraction")
    return train_idx, val_idx, test


def _standardisation(raw, train_x: np.ndarray, channels: int,
                     image_size: Optional[Tuple[int, int]]):
    """The batch preprocessing of every split: scale to [0, 1] over the whole source,
    convert channels and size, standardise with the training split's per-channel mean and
    std; returns ``(preprocess, mean, std)``."""
    arrays = [raw.x] if raw.test_x is None else [raw.x, raw.test_x]
    lo = float(min(a.min() for a in arrays))
    span = float(max(a.max() for a in arrays)) - lo
    scale = 1.0 / span if span > 0 else 1.0

    def transform(xb):
        return _transform(xb, lo, scale, channels, image_size)

    mean, std = _channel_stats(train_x, transform)

    def preprocess(xb):
        return (transform(xb) - mean) / std

    return preprocess, mean, std


def representative_dataset(
    splits_or_dataset: Union[Splits, tf.data.Dataset], n: int = 100
) -> Iterator[List[np.ndarray]]:
    """Yield up to ``n`` single-example float32 input batches for TFLite int8 calibration.

    Accepts :class:`Splits` (uses ``train``) or a dataset of ``(x, y)`` or ``x`` batches.
    Use it as ``converter.representative_dataset = lambda: representative_dataset(s)``.

    Example:
        >>> splits = load_splits("digits")
        >>> first = next(representative_dataset(splits, n=1))
        >>> first[0].shape, first[0].dtype
        ((1, 8, 8, 1), dtype('float32'))
    """
    dataset = splits_or_dataset.train if isinstance(splits_or_dataset, Splits) \
        else splits_or_dataset
    produced = 0
    for batch in dataset:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        for example in np.asarray(x, dtype=np.float32):
            if produced >= n:
                return
            yield [example[np.newaxis]]
            produced += 1


def as_arrays(dataset: tf.data.Dataset, limit: Optional[int] = None
              ) -> Tuple[np.ndarray, np.ndarray]:
    """Concatenate the ``(x, y)`` batches of ``dataset`` into two numpy arrays.

    ``limit`` caps the number of examples returned (whole batches are read).

    Example:
        >>> x, y = as_arrays(load_splits("digits").test, limit=10)
        >>> x.shape, y.shape
        ((10, 8, 8, 1), (10, 10))
    """
    xs, ys, count = [], [], 0
    for x, y in dataset:
        xs.append(np.asarray(x))
        ys.append(np.asarray(y))
        count += len(xs[-1])
        if limit is not None and count >= limit:
            break
    if not xs:
        spec = dataset.element_spec
        return (np.zeros((0,) + tuple(spec[0].shape[1:]), np.float32),
                np.zeros((0,) + tuple(spec[1].shape[1:]), np.float32))
    x, y = np.concatenate(xs), np.concatenate(ys)
    return (x, y) if limit is None else (x[:limit], y[:limit])


__all__ = ["DataError", "Splits", "load_splits", "representative_dataset", "as_arrays",
           "split_indices"]
