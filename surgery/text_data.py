"""Text data for language models: this module owns turning a folder of text files (or the
Python documentation) into packed, fixed-length token batches of three disjoint splits.

A source is ``"python_docs"`` (the reStructuredText sources of the Python 3.11 docs, the
``*.rst.txt`` files of Debian's ``python3.11-doc`` package under
``/usr/share/doc/python3.11/html/_sources``; ``SURGERY_PYTHON_DOCS_DIR`` names another
folder) or a folder of ``.txt`` / ``.rst`` / ``.md`` files, read recursively. Files are split
whole (never a file in two splits) into train/validation/test with a fixed seed. The
tokenizer is the caller's (any keras-hub tokenizer, anything with ``tokenize`` /
``detokenize``, a ``sentencepiece.SentencePieceProcessor``) or a SentencePiece model trained
on the train split alone. Each split's documents become one int32 stream, ``<s> doc </s>``
per document, which :func:`token_batches` / :func:`token_dataset` cut into windows in the
keras-hub causal-LM input format (``token_ids``, ``padding_mask``; ``y`` the next tokens).

Training the tokenizer and tokenizing are :mod:`surgery.text_tokens`'s (both cached).
Measured on python_docs (497 files, 11 MB; 2 busy cores): training an 8,000-piece
vocabulary 2.2-2.7 s, tokenizing the three splits (3.1 M tokens) 3-6 s, a second, cached
load 0.06 s.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from surgery._backend import tf
from surgery.data_sources import DataError
from surgery.text_tokens import (Document, encoder_for, text_cache_dir, tokenize_documents,
                                  train_sentencepiece)

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.90, 0.05, 0.05)
TEXT_EXTENSIONS = (".txt", ".rst", ".md")
PYTHON_DOCS_DIR = "/usr/share/doc/python3.11/html/_sources"
PYTHON_DOCS_ENV = "SURGERY_PYTHON_DOCS_DIR"


# ----------------------------------------------------------------------------- documents


def read_documents(source: Union[str, os.PathLike]) -> List[Document]:
    """The documents of ``source`` (see the module docstring) as ``(relative path, text)``
    pairs sorted by path; files holding only whitespace are left out.

    Example:
        >>> import tempfile, os
        >>> folder = tempfile.mkdtemp()
        >>> _ = open(os.path.join(folder, "a.txt"), "w").write("Hello.")
        >>> read_documents(folder)
        [('a.txt', 'Hello.')]
    """
    name = os.fspath(source)
    if name == "python_docs":
        folder = os.environ.get(PYTHON_DOCS_ENV) or PYTHON_DOCS_DIR
        if not os.path.isdir(folder):
            raise DataError(f"python_docs: {folder} not found; install it with `apt-get "
                            f"install -y python3.11-doc` or set {PYTHON_DOCS_ENV}")
        documents = _read_folder(folder, (".rst.txt",))
    elif os.path.isdir(name):
        folder, documents = name, _read_folder(name, TEXT_EXTENSIONS)
    else:
        what = "a file, not a folder" if os.path.exists(name) else "no such folder"
        raise DataError(f"{name}: {what}; pass a folder of {'/'.join(TEXT_EXTENSIONS)} "
                        f"files or source='python_docs'")
    if not documents:
        raise DataError(f"{folder}: no text in {'/'.join(TEXT_EXTENSIONS)} files; put UTF-8 "
                        f"text files there or use source='python_docs'")
    logger.info("%s: %d documents, %d characters", folder, len(documents),
                sum(len(text) for _, text in documents))
    return documents


def _read_folder(folder: str, extensions: Tuple[str, ...]) -> List[Document]:
    documents = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # .git, editor folders
        for name in files:
            if name.startswith(".") or not name.lower().endswith(extensions):
                continue
            path = os.path.join(root, name)
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start});"
                                f" convert or remove it") from None
            if text.strip():
                documents.append((os.path.relpath(path, folder).replace(os.sep, "/"), text))
    return sorted(documents)


def split_documents(documents: Sequence[Document],
                    fractions: Sequence[float] = DEFAULT_FRACTIONS,
                    seed: int = 0) -> Dict[str, List[Document]]:
    """Split whole documents into ``train`` / ``validation`` / ``test`` (each sorted by path).

    Validation and test get ``round(n * fraction)`` documents, at least one each, chosen by a
    seeded permutation of the path-sorted list; train gets the rest, so the same documents
    and seed always give the same split.

    Example:
        >>> docs = [(f"{i}.txt", "text") for i in range(20)]
        >>> {k: len(v) for k, v in split_documents(docs).items()}
        {'train': 18, 'validation': 1, 'test': 1}
    """
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions={tuple(fractions)} must be three positive numbers "
                         f"(train, validation, test) summing to 1")
    documents = sorted(documents)
    n = len(documents)
    n_val, n_test = (max(1, int(round(n * f))) for f in fractions[1:])
    if n - n_val - n_test < 1:
        raise DataError(f"only {n} documents; splitting by file needs at least 3 "
                        f"(one per split): add text files")
    order = np.random.default_rng(seed).permutation(n)
    parts = {"validation": order[:n_val], "test": order[n_val:n_val + n_test],
             "train": order[n_val + n_test:]}
    return {split: [documents[i] for i in sorted(parts[split])] for split in SPLITS}


# ----------------------------------------------------------------------------- packing


def _window_starts(length: int, sequence_length: int, batch_size: int,
                   targets: bool) -> np.ndarray:
    """Where windows start: every ``sequence_length`` tokens, as long as a whole window
    (one token more with ``targets``) fits; the ragged tail is dropped."""
    if sequence_length < 1 or batch_size < 1:
        raise ValueError(f"sequence_length={sequence_length} and batch_size={batch_size} "
                         f"must be positive")
    count = max(0, (length - int(targets)) // sequence_length)
    return np.arange(count, dtype=np.int64) * sequence_length


def _batch(windows: Any, sequence_length: int, targets: bool, ones_like: Callable) -> Any:
    x = {"token_ids": windows[:, :sequence_length],
         # keras-hub backbones declare padding_mask an int32 input; packed text has no pad
         "padding_mask": ones_like(windows[:, :sequence_length])}
    return (x, windows[:, 1:]) if targets else x


def token_batches(stream: np.ndarray, sequence_length: int, batch_size: int, *,
                  targets: bool = False, shuffle: bool = False, seed: int = 0,
                  num_batches: Optional[int] = None) -> Iterator[Any]:
    """Packed batches of consecutive ``sequence_length``-token windows of ``stream``:
    ``{"token_ids", "padding_mask"}`` int32 ``(batch_size, sequence_length)``; with
    ``targets``, ``(x, y)`` where ``y`` is each window's next tokens. At most
    ``num_batches``; windows in order, or seeded-shuffled; the ragged tail is dropped.

    Example:
        >>> x, y = next(token_batches(np.arange(10, dtype=np.int32), 3, 2, targets=True))
        >>> x["token_ids"].tolist(), y.tolist()
        ([[0, 1, 2], [3, 4, 5]], [[1, 2, 3], [4, 5, 6]])
    """
    stream = np.asarray(stream, dtype=np.int32)
    starts = _window_starts(len(stream), sequence_length, batch_size, targets)
    if shuffle:
        starts = np.random.default_rng(seed).permutation(starts)
    batches = len(starts) // batch_size
    offsets = np.arange(sequence_length + int(targets))[None, :]
    for b in range(batches if num_batches is None else min(batches, num_batches)):
        windows = stream[starts[b * batch_size:(b + 1) * batch_size, None] + offsets]
        yield _batch(windows, sequence_length, targets, np.ones_like)


def token_dataset(stream: np.ndarray, sequence_length: int, batch_size: int, *,
                  targets: bool = True, shuffle: bool = False, seed: int = 0,
                  num_batches: Optional[int] = None) -> tf.data.Dataset:
    """:func:`token_batches` as a ``tf.data.Dataset`` (``targets`` on by default, for
    ``fit`` / ``evaluate``); ``shuffle`` reshuffles the windows each epoch, seeded.

    Example:
        >>> ds = token_dataset(np.arange(100, dtype=np.int32), 8, 4)
        >>> [tuple(t.shape) for t in next(iter(ds))[0].values()], len(ds)
        ([(4, 8), (4, 8)], 3)
    """
    starts = _window_starts(len(stream), sequence_length, batch_size, targets)
    tokens = tf.constant(np.asarray(stream, dtype=np.int32))
    dataset = tf.data.Dataset.from_tensor_slices(starts)
    if shuffle:  # windows from the whole split, in a new seeded order each epoch
        dataset = dataset.shuffle(max(1, len(starts)), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if num_batches is not None:
        dataset = dataset.take(num_batches)
    offsets = tf.range(sequence_length + int(targets), dtype=tf.int64)[None, :]
    dataset = dataset.map(
        lambda s: _batch(tf.gather(tokens, s[:, None] + offsets), sequence_length, targets,
                         tf.ones_like), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------- entry point


@dataclass
class TextSplits:
    """Three token streams (int32, one per split) and how they were made.

    ``files`` maps each split to its documents' paths; ``proto`` is the trained
    SentencePiece model (None when the caller gave a tokenizer); ``tokenizer`` is the
    caller's, or a ``keras_hub.models.LlamaTokenizer`` of ``proto``, built on first use.
    """

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    files: Dict[str, List[str]]
    vocabulary_size: int
    sequence_length: int
    proto: Optional[bytes] = field(default=None, repr=False)
    seed: int = 0
    given_tokenizer: Any = field(default=None, repr=False)
    _trained_tokenizer: Any = field(default=None, repr=False, init=False)

    @property
    def documents(self) -> Dict[str, int]:
        """The number of documents in each split."""
        return {split: len(paths) for split, paths in self.files.items()}

    @property
    def tokenizer(self) -> Any:
        """The tokenizer of the streams (keras-hub is imported on first use of a trained one)."""
        if self.given_tokenizer is not None or self.proto is None:
            return self.given_tokenizer
        if self._trained_tokenizer is None:
            # lazy: keras-hub (Keras 3, tensorflow-text) takes seconds to import
            import keras_hub

            self._trained_tokenizer = keras_hub.models.LlamaTokenizer(proto=self.proto)
        return self._trained_tokenizer

    def stream(self, split: str) -> np.ndarray:
        """The token stream of ``split`` (``"train"``, ``"validation"`` or ``"test"``)."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r} must be one of {', '.join(SPLITS)}")
        return getattr(self, split)

    def batches(self, split: str, batch_size: int, **options: Any) -> Iterator[Any]:
        """:func:`token_batches` of ``split`` at :attr:`sequence_length`."""
        return token_batches(self.stream(split), self.sequence_length, batch_size, **options)

    def dataset(self, split: str, batch_size: int, *, shuffle: Optional[bool] = None,
                **options: Any) -> tf.data.Dataset:
        """:func:`token_dataset` of ``split``; shuffled (seeded) by default for train only."""
        shuffle = split == "train" if shuffle is None else shuffle
        return token_dataset(self.stream(split), self.sequence_length, batch_size,
                             shuffle=shuffle, seed=self.seed, **options)


def load_text(source: Union[str, os.PathLike] = "python_docs", *, tokenizer: Any = None,
              vocabulary_size: int = 8000, sequence_length: int = 256,
              cache_dir: Optional[str] = None,
              fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0,
              progress: bool = True) -> TextSplits:
    """Read ``source``, split it by file, tokenize it (training a SentencePiece model on the
    train split when no ``tokenizer`` is given) and return the streams (cached).

    Example:
        >>> import tempfile, os
        >>> folder, cache, line = tempfile.mkdtemp(), tempfile.mkdtemp(), "the cat sat\\n"
        >>> for i in range(3):
        ...     _ = open(os.path.join(folder, f"{i}.txt"), "w").write(line * 20)
        >>> text = load_text(folder, vocabulary_size=280, sequence_length=8, cache_dir=cache)
        >>> text.documents, text.vocabulary_size
        ({'train': 1, 'validation': 1, 'test': 1}, 280)
        >>> x, y = next(text.batches("test", 2, targets=True))
        >>> x["token_ids"].shape, y.shape
        ((2, 8), (2, 8))
    """
    if sequence_length < 1:
        raise ValueError(f"sequence_length={sequence_length} must be positive")
    parts = split_documents(read_documents(source), fractions, seed)
    proto = None
    if tokenizer is None:
        proto = train_sentencepiece(parts["train"], vocabulary_size, seed=seed,
                                    cache_dir=cache_dir)
    encoder = encoder_for(proto if tokenizer is None else tokenizer)
    streams = {split: tokenize_documents(parts[split], encoder, cache_dir=cache_dir,
                                         progress=progress, label=split) for split in SPLITS}
    return TextSplits(**streams, files={s: [p for p, _ in parts[s]] for s in SPLITS},
                      vocabulary_size=encoder.vocabulary_size,
                      sequence_length=sequence_length, proto=proto, seed=seed,
                      given_tokenizer=tokenizer)


__all__ = ["Document", "DEFAULT_FRACTIONS", "TextSplits", "load_text", "read_documents",
           "split_documents", "text_cache_dir", "train_sentencepiece", "tokenize_documents",
           "token_batches", "token_dataset"]
