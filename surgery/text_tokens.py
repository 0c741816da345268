"""Tokenizing text for language models: this module owns the SentencePiece model trained
on a corpus's train split, the caller's tokenizer seen through one small interface
(:func:`encoder_for`), and each split's documents turned into one cached int32 stream,
``<s> doc </s>`` per document (:func:`tokenize_documents`). :mod:`surgery.text_data`
reads, splits and packs the text around it.

The trained model is BPE: on the Python docs it trains in 2.2-2.7 s where unigram takes
18-30 s (2 cores, measured), and Llama's own SentencePiece model is BPE. Its special ids are
``<pad>`` 0, ``<unk>`` 1, ``<s>`` 2, ``</s>`` 3, so it loads as
``keras_hub.models.LlamaTokenizer(proto=...)`` (which needs ``<s>`` and ``</s>`` and pads
with id 0). Whitespace is kept as written (identity normalisation, byte fallback for
newlines and rare characters): ``detokenize(tokenize(text)) == text``. The trained proto and
the token streams are cached (``cache_dir``, ``$SURGERY_TEXT_CACHE``, else
``~/.cache/keras-surgery/text``) under a hash of their inputs.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pathlib
import time
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import sentencepiece
from tqdm.auto import tqdm

from surgery.atomic import write_atomically
from surgery.data_sources import DataError
from surgery.progress import bars_wanted

logger = logging.getLogger(__name__)

Document = Tuple[str, str]  # (path relative to the source folder, text)
CACHE_ENV = "SURGERY_TEXT_CACHE"
#: training reads at most this many (seeded, sampled) lines: python_docs has about 205,000
MAX_TRAINING_LINES = 500_000
_CHUNK = 64  # documents per tokenizer call: fewer calls are faster (measured), more show progress
_CACHE_VERSION = 1  # bump when the cached files' meaning changes


def _digest(documents: Sequence[Document]) -> str:
    h = hashlib.sha256()
    for path, text in documents:
        h.update(path.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()


def text_cache_dir(cache_dir: Optional[str] = None) -> str:
    """Where trained tokenizers and token streams are cached: ``cache_dir``, else
    ``$SURGERY_TEXT_CACHE``, else ``~/.cache/keras-surgery/text``.

    >>> text_cache_dir("/tmp/c")
    '/tmp/c'
    """
    return cache_dir or os.environ.get(CACHE_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "keras-surgery", "text")


# ----------------------------------------------------------------------------- tokenizer


def train_sentencepiece(documents: Sequence[Document], vocabulary_size: int = 8000, *,
                        model_type: str = "bpe", seed: int = 0,
                        cache_dir: Optional[str] = None) -> bytes:
    """A serialized SentencePiece model trained on ``documents`` (cached; see the module
    docstring for its settings). Loadable by ``sentencepiece.SentencePieceProcessor(
    model_proto=...)`` and ``keras_hub.models.LlamaTokenizer(proto=...)``.

    Example:
        >>> import tempfile, sentencepiece
        >>> proto = train_sentencepiece([("a.txt", "the cat sat on the mat\\n" * 50)], 280,
        ...                             cache_dir=tempfile.mkdtemp())
        >>> sentencepiece.SentencePieceProcessor(model_proto=proto).decode([2, 3])
        ''
    """
    settings = dict(
        vocab_size=vocabulary_size, model_type=model_type, pad_id=0, unk_id=1, bos_id=2,
        eos_id=3, byte_fallback=True, character_coverage=0.9995, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, input_sentence_size=0,
        shuffle_input_sentence=False,  # we sample the lines ourselves, seeded
        num_threads=1)  # BPE gains nothing from threads, and the count is saved in the proto
    key = _key(_CACHE_VERSION, settings, seed, MAX_TRAINING_LINES, _digest(documents))
    path = os.path.join(text_cache_dir(cache_dir), f"sentencepiece-{key}.model")
    if os.path.isfile(path):
        logger.info("sentencepiece model loaded from cache %s", path)
        with open(path, "rb") as f:
            return f.read()
    lines = [line for _, text in documents for line in text.split("\n") if line.strip()]
    if len(lines) > MAX_TRAINING_LINES:
        keep = np.random.default_rng(seed).choice(len(lines), MAX_TRAINING_LINES, False)
        lines = [lines[i] for i in sorted(keep)]
    started = time.perf_counter()
    proto = _train_proto(lines, settings)
    logger.info("trained a %d-piece sentencepiece %s model on %d lines in %.1f s; cached in %s",
                vocabulary_size, model_type, len(lines), time.perf_counter() - started, path)
    write_atomically(path, lambda tmp: pathlib.Path(tmp).write_bytes(proto))
    return proto


def _train_proto(lines: List[str], settings: dict) -> bytes:
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, minloglevel=2, **settings)
    except RuntimeError as exc:  # e.g. "Vocabulary size too high (1000). Please set it ..."
        reason = str(exc).strip().splitlines()[-1].split("] ")[-1]
        raise DataError(f"sentencepiece training failed: {reason}; pass another "
                        f"vocabulary_size or more text") from None
    return model.getvalue()


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()
                          ).hexdigest()[:20]


class _Encoder(NamedTuple):
    """Texts -> id lists, the ids around each document, a hash of the vocabulary (None: not
    cacheable)."""

    encode: Callable[[List[str]], List[Sequence[int]]]
    bos: Optional[int]
    eos: Optional[int]
    fingerprint: Optional[str]
    vocabulary_size: int


def encoder_for(tokenizer: Any) -> _Encoder:
    """Adapt ``tokenizer``: proto bytes, a SentencePieceProcessor, or a keras-hub-like one."""
    if hasattr(tokenizer, "serialized_model_proto"):
        tokenizer = tokenizer.serialized_model_proto()
    if isinstance(tokenizer, bytes):
        sp = sentencepiece.SentencePieceProcessor(model_proto=tokenizer)
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        bos, eos = (i if i >= 0 else None for i in (sp.bos_id(), sp.eos_id()))  # -1: none
        encoder = _Encoder(lambda texts: sp.encode(texts, num_threads=threads), bos, eos,
                           hashlib.sha256(tokenizer).hexdigest(), sp.vocab_size())
    elif callable(getattr(tokenizer, "tokenize", None)):
        if getattr(tokenizer, "sequence_length", None):
            raise DataError(f"tokenizer has sequence_length={tokenizer.sequence_length}, "
                            f"which would cut documents; pass one with sequence_length=None")
        # a keras-hub SentencePieceTokenizer made with add_bos / add_eos adds them itself
        bos, eos = (None if getattr(tokenizer, f"add_{end}", False)
                    else getattr(tokenizer, f"{name}_token_id", None)
                    for end, name in (("bos", "start"), ("eos", "end")))
        size = getattr(tokenizer, "vocabulary_size", None)
        size = size() if callable(size) else size
        encoder = _Encoder(lambda texts: _id_lists(tokenizer.tokenize(texts)), bos, eos,
                           _fingerprint(tokenizer), int(size) if size is not None else -1)
    else:
        raise TypeError(f"tokenizer {type(tokenizer).__name__} has no tokenize(); pass a "
                        f"keras-hub tokenizer, a SentencePieceProcessor or proto bytes")
    if encoder.eos is None and not getattr(tokenizer, "add_eos", False):
        raise DataError(f"tokenizer {type(tokenizer).__name__} has no end token; documents "
                        f"need one between them")
    return encoder


def _id_lists(output: Any) -> List[Sequence[int]]:
    if hasattr(output, "to_list"):  # a tf.RaggedTensor
        return output.to_list()
    return list(output.numpy() if hasattr(output, "numpy") else output)


def _fingerprint(tokenizer: Any) -> Optional[str]:
    """A hash of what decides a keras-hub tokenizer's ids: its SentencePiece proto, or its
    vocabulary (and BPE merges), and its configuration; None when it shows neither."""
    h = hashlib.sha256(type(tokenizer).__qualname__.encode())
    proto = getattr(tokenizer, "proto", None)
    if isinstance(proto, bytes):
        h.update(proto)
    elif callable(getattr(tokenizer, "get_vocabulary", None)):
        h.update(json.dumps(list(tokenizer.get_vocabulary())).encode())
        h.update(json.dumps(list(getattr(tokenizer, "merges", None) or [])).encode())
    else:
        return None
    config = tokenizer.get_config() if callable(getattr(tokenizer, "get_config", None)) else {}
    config = {k: v for k, v in config.items() if k not in ("name", "proto", "vocabulary",
                                                          "merges")}
    h.update(json.dumps(config, sort_keys=True, default=repr).encode())
    return h.hexdigest()


def tokenize_documents(documents: Sequence[Document], tokenizer: Any, *,
                       cache_dir: Optional[str] = None, progress: bool = True,
                       label: str = "documents") -> np.ndarray:
    """One int32 stream of ``documents``: ``[bos] ids [eos]`` per document, concatenated
    (``bos`` where the tokenizer has one). ``tokenizer`` is proto bytes, a
    SentencePieceProcessor or a keras-hub-like tokenizer; streams are cached by its
    fingerprint and the documents.

    Example:
        >>> import tempfile
        >>> docs, cache = [("a.txt", "the cat sat on the mat\\n" * 50)], tempfile.mkdtemp()
        >>> proto = train_sentencepiece(docs, 280, cache_dir=cache)
        >>> tokenize_documents([("b", "cat")], proto, cache_dir=cache, progress=False)[[0, -1]]
        array([2, 3], dtype=int32)
    """
    encoder = tokenizer if isinstance(tokenizer, _Encoder) else encoder_for(tokenizer)
    path = None
    if encoder.fingerprint is not None:
        key = _key(_CACHE_VERSION, encoder.fingerprint, encoder.bos, encoder.eos,
                   _digest(documents))
        path = os.path.join(text_cache_dir(cache_dir), f"tokens-{key}.npy")
        if os.path.isfile(path):
            logger.info("%s tokens loaded from cache %s", label, path)
            return np.load(path, allow_pickle=False)
    else:
        logger.info("the tokenizer shows no vocabulary to fingerprint; tokens not cached")
    stream = _encode_documents(documents, encoder, progress, label)
    if path is not None:
        npy = io.BytesIO()
        np.save(npy, stream)
        write_atomically(path, lambda tmp: pathlib.Path(tmp).write_bytes(npy.getvalue()))
    return stream


def _encode_documents(documents: Sequence[Document], encoder: _Encoder, progress: bool,
                      label: str) -> np.ndarray:
    started = time.perf_counter()
    bos = [] if encoder.bos is None else [encoder.bos]
    eos = [] if encoder.eos is None else [encoder.eos]
    pieces = []
    with tqdm(total=len(documents), desc=f"tokenizing {label}", unit="doc", leave=False,
              disable=not bars_wanted(progress)) as bar:
        for start in range(0, len(documents), _CHUNK):
            texts = [text for _, text in documents[start:start + _CHUNK]]
            for ids in encoder.encode(texts):
                pieces.append(np.asarray(bos + list(ids) + eos, dtype=np.int32))
            bar.update(len(texts))
    stream = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    logger.info("tokenized %d %s documents: %d tokens in %.1f s", len(documents), label,
                len(stream), time.perf_counter() - started)
    return stream


__all__ = ["CACHE_ENV", "encoder_for", "text_cache_dir", "tokenize_documents",
           "train_sentencepiece"]
