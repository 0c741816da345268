"""Input pipelines: this module owns turning a data source into batched ``tf.data`` splits.

A source is the built-in ``"digits"`` set (scikit-learn's 1,797 8x8 digit images, no
network needed), a ``keras.datasets`` name (``"mnist"``, ``"cifar10"``, ``"cifar100"``), a
folder holding ``image_array.npy`` + ``label_one_hot.npy`` (the seed project's format;
an optional ``class_names.txt`` names the classes, one per line), a
folder of class subfolders of PNG/JPEG images, or an ``(x, y)`` tuple of arrays. The source
is validated (bad input raises :class:`DataError` with one clear line), split into fixed
seeded stratified train/val/test parts, scaled to [0, 1] per dataset, converted to the
requested channels and size, standardised with the training split's per-channel mean and
std, optionally augmented (train only), and served as ``(x, y_onehot)`` float32 batches.
It also provides the representative-dataset generator for TFLite int8 calibration and a
small helper to pull a dataset back into numpy arrays.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple, Union

import numpy as np

from surgery._backend import keras, tf

logger = logging.getLogger(__name__)

KERAS_DATASETS = ("mnist", "cifar10", "cifar100")
BUILTIN_SOURCES = ("digits",) + KERAS_DATASETS
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
NPY_IMAGES = "image_array.npy"
NPY_LABELS = "label_one_hot.npy"
CLASS_NAMES_FILE = "class_names.txt"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
_STATS_CHUNK = 1024

Source = Union[str, os.PathLike, Tuple[np.ndarray, np.ndarray]]


class DataError(ValueError):
    """A data source is missing, unreadable or malformed; the message says which and why."""


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


@dataclass
class _Raw:
    """A loaded, validated source before splitting: raw NHWC images and integer labels."""

    x: np.ndarray
    y: np.ndarray
    class_names: List[str]
    test_x: Optional[np.ndarray] = None  # official test split (keras datasets)
    test_y: Optional[np.ndarray] = None


# ----------------------------------------------------------------------------- validation


def _as_images(x: np.ndarray, what: str) -> np.ndarray:
    """Return ``x`` as NHWC: (N, H, W) gains a channel axis; anything else is an error."""
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"{what}: images must be numeric, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4:
        raise DataError(
            f"{what}: images must have shape (N, H, W) or (N, H, W, C), got {x.shape}"
        )
    if x.shape[-1] not in (1, 3, 4):
        raise DataError(f"{what}: images must have 1, 3 or 4 channels, got shape {x.shape}")
    if x.shape[-1] == 4:
        x = x[..., :3]  # drop alpha
    if len(x) == 0:
        raise DataError(f"{what}: no images")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{what}: images contain NaN or infinite values")
    return x


def _as_int_labels(y: np.ndarray, what: str) -> Tuple[np.ndarray, Optional[int]]:
    """Return integer labels and the class count implied by one-hot labels (else None).

    Accepts one-hot rows ``(N, K)`` or integer labels ``(N,)`` / ``(N, 1)``.
    """
    y = np.asarray(y)
    if y.dtype == object or not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise DataError(f"{what}: labels must be numeric, got dtype {y.dtype}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2:
        if not np.all((y == 0) | (y == 1)) or not np.all(y.sum(axis=1) == 1):
            raise DataError(
                f"{what}: 2-D labels must be one-hot (each row all 0 with a single 1)"
            )
        return y.argmax(axis=1).astype(np.int64), int(y.shape[1])
    if y.ndim != 1:
        raise DataError(
            f"{what}: labels must be one-hot (N, K) or integers (N,), got shape {y.shape}"
        )
    if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
        raise DataError(f"{what}: integer labels must be whole numbers")
    if y.size and y.min() < 0:
        raise DataError(f"{what}: labels out of range: found {int(y.min())}, must be >= 0")
    return y.astype(np.int64), None


def _validate(x, y, what: str, class_names: Optional[List[str]] = None) -> _Raw:
    """Check images and labels agree and return them as a :class:`_Raw`."""
    x = _as_images(x, what)
    labels, one_hot_classes = _as_int_labels(y, what)
    if len(x) != len(labels):
        raise DataError(
            f"{what}: {len(x)} images but {len(labels)} labels; they must have equal length"
        )
    num_classes = one_hot_classes or (len(class_names) if class_names else None)
    num_classes = num_classes or int(labels.max()) + 1
    if labels.max() >= num_classes:
        raise DataError(
            f"{what}: labels out of range: found {int(labels.max())}, "
            f"but there are {num_classes} classes"
        )
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
    elif len(class_names) != num_classes:
        raise DataError(
            f"{what}: {len(class_names)} class names but one-hot labels have "
            f"{num_classes} columns"
        )
    return _Raw(x, labels, list(class_names))


# ----------------------------------------------------------------------------- sources


def _load_digits() -> _Raw:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return _validate(digits.images.astype(np.float32), digits.target, "digits")


def _load_keras_dataset(name: str, cache_dir: Optional[str]) -> _Raw:
    loaders = {
        "mnist": lambda: keras.datasets.mnist.load_data(cache_dir=cache_dir),
        "cifar10": lambda: keras.datasets.cifar10.load_data(cache_dir=cache_dir),
        "cifar100": lambda: keras.datasets.cifar100.load_data(cache_dir=cache_dir),
    }
    where = cache_dir or os.path.join("~", ".keras", "datasets")
    try:
        (x, y), (tx, ty) = loaders[name]()
    except Exception as exc:  # keras raises bare Exception on URL failures
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"{name} is not cached in {where} and could not be downloaded ({reason}); "
            f"copy the keras dataset file there, or use source='digits' or a local folder"
        ) from None
    names = CIFAR10_CLASSES if name == "cifar10" else None
    raw = _validate(x, np.reshape(y, (-1,)), name, names)
    test = _validate(tx, np.reshape(ty, (-1,)), f"{name} (test)", raw.class_names)
    raw.test_x, raw.test_y = test.x, test.y
    return raw


def _load_npy_folder(folder: str) -> _Raw:
    images = os.path.join(folder, NPY_IMAGES)
    labels = os.path.join(folder, NPY_LABELS)
    for path in (images, labels):
        if not os.path.isfile(path):
            raise DataError(f"{folder}: missing {os.path.basename(path)}")
    try:
        x = np.load(images, allow_pickle=False)
        y = np.load(labels, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{folder}: cannot read the .npy files: {exc}") from None
    return _validate(x, y, folder, _read_class_names(folder))


def _read_class_names(folder: str) -> Optional[List[str]]:
    """Class names from an optional ``class_names.txt`` (one per line) next to the arrays."""
    path = os.path.join(folder, CLASS_NAMES_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise DataError(f"{path}: no class names")
    return names


def _decode_image(path: str) -> np.ndarray:
    try:
        data = tf.io.read_file(path)
        return tf.io.decode_image(data, expand_animations=False).numpy()
    except (tf.errors.OpError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc.__class__.__name__})") from None


def _load_image_folder(folder: str, image_size: Optional[Tuple[int, int]]) -> _Raw:
    class_dirs = sorted(
        d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))
    )
    images, labels, class_names = [], [], []
    for class_dir in class_dirs:
        files = sorted(
            f for f in os.listdir(os.path.join(folder, class_dir))
            if f.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not files:
            logger.warning("%s: class folder %r has no images; skipped", folder, class_dir)
            continue
        for f in files:
            images.append(_decode_image(os.path.join(folder, class_dir, f)))
            labels.append(len(class_names))
        class_names.append(class_dir)
    if not images:
        raise DataError(
            f"{folder}: no images found; expected {NPY_IMAGES} + {NPY_LABELS} or class "
            f"subfolders of {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} files"
        )
    channels = 3 if any(im.shape[-1] >= 3 for im in images) else 1
    images = [_to_channels_np(_drop_alpha(im), channels) for im in images]
    shapes = {im.shape[:2] for im in images}
    if len(shapes) > 1:
        if image_size is None:
            raise DataError(
                f"{folder}: images have different sizes {sorted(shapes)[:3]}...; "
                f"pass image_size=(height, width)"
            )
        images = [tf.image.resize(im, image_size).numpy() for im in images]
    logger.info("%s: %d images in %d classes", folder, len(images), len(class_names))
    return _validate(np.stack(images), np.array(labels), folder, class_names)


def _drop_alpha(image: np.ndarray) -> np.ndarray:
    return image[..., :1] if image.shape[-1] == 2 else image[..., :3]


def _to_channels_np(image: np.ndarray, channels: int) -> np.ndarray:
    if image.shape[-1] == channels:
        return image
    return np.repeat(image, channels, axis=-1) if channels == 3 else image


def _load_source(source: Source, image_size, cache_dir) -> _Raw:
    if isinstance(source, tuple):
        if len(source) != 2:
            raise DataError("an array source must be a tuple (x, y)")
        return _validate(source[0], source[1], "arrays")
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(f"unsupported source type {type(source).__name__}")
    name = os.fspath(source)
    if name == "digits":
        return _load_digits()
    if name in KERAS_DATASETS:
        return _load_keras_dataset(name, cache_dir)
    if not os.path.exists(name):
        raise DataError(
            f"unknown source {name!r}: expected one of {', '.join(BUILTIN_SOURCES)} "
            f"or an existing folder"
        )
    if not os.path.isdir(name):
        raise DataError(f"{name}: source must be a folder, not a file")
    if any(os.path.exists(os.path.join(name, f)) for f in (NPY_IMAGES, NPY_LABELS)):
        return _load_npy_folder(name)
    return _load_image_folder(name, image_size)


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
        source: ``"digits"`` (built in, offline), ``"mnist"``, ``"cifar10"``,
            ``"cifar100"`` (``keras.datasets``; their official test split is the test
            split and ``test_fraction`` is ignored), a folder with ``image_array.npy`` +
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
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1, 3 or None, got {channels!r}")
    if image_size is not None:
        image_size = tuple(int(s) for s in image_size)
        if len(image_size) != 2 or min(image_size) < 1:
            raise DataError(f"image_size must be (height, width), got {image_size}")
    if int(batch_size) < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    _check_fractions(val_fraction, test_fraction)

    raw = _load_source(source, image_size, cache_dir)
    num_classes = len(raw.class_names)
    if raw.test_x is None:
        train_idx, val_idx, test_idx = split_indices(raw.y, val_fraction, test_fraction, seed)
        test_x, test_y = raw.x[test_idx], raw.y[test_idx]
    else:
        train_idx, val_idx, _ = split_indices(raw.y, val_fraction, 0.0, seed)
        test_x, test_y = raw.test_x, raw.test_y
    if len(train_idx) == 0:
        raise DataError("the training split is empty; lower val_fraction/test_fraction")

    arrays = [raw.x] if raw.test_x is None else [raw.x, raw.test_x]
    lo = float(min(a.min() for a in arrays))
    span = float(max(a.max() for a in arrays)) - lo
    scale = 1.0 / span if span > 0 else 1.0
    out_channels = channels or raw.x.shape[-1]

    def transform(xb):
        return _transform(xb, lo, scale, out_channels, image_size)

    train_x = raw.x[train_idx]
    mean, std = _channel_stats(train_x, transform)

    def preprocess(xb):
        return (transform(xb) - mean) / std

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
