"""Data sources: this module owns reading a source into validated raw images and labels.

A source is the built-in ``"digits"`` set (scikit-learn's 8x8 digits), ``"fashion_mnist"``
(the gzip IDX files of Debian's ``dataset-fashion-mnist`` package in
``/usr/share/datasets/fashion-mnist``, or of Keras's cache ``~/.keras/datasets/fashion-mnist``;
the ``SURGERY_FASHION_MNIST_DIR`` environment variable names another folder), a
``keras.datasets`` name (``"mnist"``, ``"cifar10"``, ``"cifar100"``), a folder of
``image_array.npy`` + ``label_one_hot.npy``, a folder of class subfolders of images, or an
``(x, y)`` tuple of arrays. Everything is checked (:class:`DataError`, one clear line) and
returned as NHWC images with integer labels and class names; :mod:`surgery.data` splits,
scales and batches them.
"""
from __future__ import annotations

import gzip
import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import numpy as np

from surgery._backend import keras, tf

logger = logging.getLogger(__name__)

KERAS_DATASETS = ("mnist", "cifar10", "cifar100")
BUILTIN_SOURCES = ("digits",) + KERAS_DATASETS + ("fashion_mnist",)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
NPY_IMAGES = "image_array.npy"
NPY_LABELS = "label_one_hot.npy"
CLASS_NAMES_FILE = "class_names.txt"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]
#: where Debian's ``dataset-fashion-mnist`` package installs the four gzip IDX files
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
#: an environment variable naming the one folder to read Fashion-MNIST from instead
FASHION_MNIST_ENV = "SURGERY_FASHION_MNIST_DIR"
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                       "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}

Source = Union[str, os.PathLike, Tuple[np.ndarray, np.ndarray]]


class DataError(ValueError):
    """A data source is missing, unreadable or malformed; the message says which and why."""



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
    # scikit-learn is imported here, not at the top: it is heavy and only "digits" needs it.
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


def load_source(source: Source, image_size=None, cache_dir=None) -> _Raw:
    """Read and check ``source`` (see the module docstring); raises :class:`DataError`."""
    if isinstance(source, tuple):
        if len(source) != 2:
            raise DataError("an array source must be a tuple (x, y)")
        return _validate(source[0], source[1], "arrays")
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(f"unsupported source type {type(source).__name__}")
    name = os.fspath(source)
    if name == "digits":
        return _load_digits()
    if name == "fashion_mnist":
        return _load_fashion_mnist(cache_dir)
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


# ----------------------------------------------------------------------------- IDX files


def read_idx(path: str) -> np.ndarray:
    """The array in an IDX file (the MNIST format; gzip-compressed when named ``*.gz``).

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "x-idx1-ubyte")
        >>> _ = open(p, "wb").write(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
        >>> read_idx(p)
        array([7, 8, 9], dtype=uint8)
    """
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            payload = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read it ({exc})") from None
    if len(payload) < 4 or payload[:2] != b"\0\0" or payload[2] not in dtypes:
        raise DataError(f"{path}: not an IDX file (bad magic number); reinstall the data")
    ndim = payload[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(payload[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(dtypes[payload[2]])
    if len(payload) < header or len(payload) - header != int(np.prod(shape)) * dtype.itemsize:
        raise DataError(f"{path}: truncated or malformed IDX file (header says {shape}); "
                        "reinstall the data")
    return np.frombuffer(payload, dtype, offset=header).reshape(shape).astype(
        dtype.newbyteorder("="))


def fashion_mnist_dirs(cache_dir: Optional[str] = None) -> List[str]:
    """The folders searched for Fashion-MNIST, in order: ``$SURGERY_FASHION_MNIST_DIR``
    alone when set; else Debian's package folder, then Keras's cache.

    >>> fashion_mnist_dirs("/tmp/k")[-1]
    '/tmp/k/datasets/fashion-mnist'
    """
    if os.environ.get(FASHION_MNIST_ENV):
        return [os.environ[FASHION_MNIST_ENV]]
    keras_home = cache_dir or os.path.join(os.path.expanduser("~"), ".keras")
    return [FASHION_MNIST_DEBIAN_DIR, os.path.join(keras_home, "datasets", "fashion-mnist")]


def _load_fashion_mnist(cache_dir: Optional[str]) -> _Raw:
    folders = fashion_mnist_dirs(cache_dir)
    names = [n for pair in FASHION_MNIST_FILES.values() for n in pair]
    found = next((d for d in folders
                  if all(os.path.isfile(os.path.join(d, n)) for n in names)), None)
    if found is None:
        raise DataError(
            f"fashion_mnist: the four gzip IDX files are not in {' or '.join(folders)}; "
            f"install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or "
            f"set {FASHION_MNIST_ENV} to a folder holding {', '.join(names)}")
    arrays = {split: [read_idx(os.path.join(found, n)) for n in pair]
              for split, pair in FASHION_MNIST_FILES.items()}
    raw = _validate(*arrays["train"], f"fashion_mnist ({found})", FASHION_MNIST_CLASSES)
    test = _validate(*arrays["test"], f"fashion_mnist test ({found})", raw.class_names)
    raw.test_x, raw.test_y = test.x, test.y
    logger.info("fashion_mnist: %d + %d images from %s", len(raw.x), len(test.x), found)
    return raw


__all__ = ["DataError", "Source", "BUILTIN_SOURCES", "KERAS_DATASETS", "read_idx",
           "fashion_mnist_dirs", "load_source"]
