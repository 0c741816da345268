"""surgery.text_data: text files read and split by file, a SentencePiece model trained on the
train split (round trip, determinism, loadable by keras-hub), exact packing into causal-LM
batches, the caches of a second load, and one-line errors that name the fix.

The keras-hub check runs in a Keras 3 child process (tests/keras3_child.py), as the other
keras-hub tests do: this process holds tf-keras.
"""
import json
import os

import numpy as np
import pytest
import sentencepiece
from keras3_child import run_case

from surgery import text_data, text_tokens
from surgery.data_sources import DataError
from surgery.text_data import (load_text, read_documents, split_documents, token_batches,
                               token_dataset, tokenize_documents, train_sentencepiece)

PARAGRAPHS = [
    "The quick brown fox jumps over the lazy dog.\n",
    "Pruning removes whole channels, so the smaller model runs faster everywhere.\n",
    "A tokenizer turns text into integers; a language model predicts the next one.\n",
    "    indented = code(with, 2 arguments)  # and a comment\n",
    "Numbers such as 3.14159 and 2026 are split into digits.\n",
    "Every file belongs to exactly one split: train, validation or test.\n",
    "\n",
    "Quoting \"double\" and 'single' marks, brackets [x] {y} <z>, and a dash - too.\n",
]
VOCABULARY = 320  # byte fallback alone takes 256 + 4 special pieces
FILES = ["a.txt", "b.txt", "c.md", "d.rst", "notes/e.txt", "notes/f.md", "notes/deep/g.txt",
         "h.rst.txt"]


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """No test writes to the user's cache, even one that forgets ``cache_dir``."""
    monkeypatch.setenv(text_tokens.CACHE_ENV, str(tmp_path / "default-cache"))


def _write(folder, name, text):
    path = os.path.join(folder, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


@pytest.fixture
def corpus(tmp_path):
    folder = str(tmp_path / "corpus")
    for i, name in enumerate(FILES):
        _write(folder, name, f"Document {i}.\n" + "".join(
            PARAGRAPHS[(i + k) % len(PARAGRAPHS)] for k in range(24)))
    _write(folder, "script.py", "print('not text')\n")  # not a text extension
    _write(folder, ".hidden.txt", "hidden\n")
    _write(folder, ".git/config.txt", "hidden folder\n")
    _write(folder, "blank.txt", "  \n\n")  # whitespace only
    return folder


def test_read_documents_finds_the_text_files_recursively_and_only_them(corpus):
    docs = read_documents(corpus)
    assert [path for path, _ in docs] == sorted(FILES)
    assert docs[0][1].startswith("Document 0.\nThe quick brown fox")


def test_split_by_file_is_deterministic_disjoint_and_uses_every_file(corpus):
    docs = read_documents(corpus)
    split = split_documents(docs)
    assert split == split_documents(list(reversed(docs)))  # the input order does not matter
    names = {s: {path for path, _ in split[s]} for s in split}
    assert [len(names[s]) for s in ("train", "validation", "test")] == [6, 1, 1]
    assert names["train"] | names["validation"] | names["test"] == set(FILES)
    assert not (names["train"] & names["validation"] or names["train"] & names["test"]
                or names["validation"] & names["test"])
    others = [split_documents(docs, seed=s) for s in range(1, 6)]
    assert any(o["test"] != split["test"] for o in others)  # the seed decides
    with pytest.raises(DataError, match="at least 3"):
        split_documents(docs[:2])
    with pytest.raises(ValueError, match="summing to 1"):
        split_documents(docs, (0.9, 0.1, 0.0))


def test_trained_sentencepiece_round_trips_and_is_deterministic(corpus, tmp_path):
    train = split_documents(read_documents(corpus))["train"]
    proto = train_sentencepiece(train, VOCABULARY, cache_dir=str(tmp_path / "one"))
    assert proto == train_sentencepiece(train, VOCABULARY, cache_dir=str(tmp_path / "two"))
    sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
    assert sp.vocab_size() == VOCABULARY
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    for text in ["The quick brown fox.", "  two  spaces,\ttab\n\nand lines\n",
                 "unseen: Zürich ☃ 😀", PARAGRAPHS[3] * 2]:
        ids = sp.encode(text)
        assert sp.unk_id() not in ids
        assert sp.decode(ids) == text
    stream = tokenize_documents([("x", "fox"), ("y", "dog")], proto, progress=False,
                                cache_dir=str(tmp_path / "one"))
    assert stream.dtype == np.int32
    assert stream.tolist() == [2, *sp.encode("fox"), 3, 2, *sp.encode("dog"), 3]


def test_too_large_a_vocabulary_is_one_line_naming_the_fix(corpus, tmp_path):
    with pytest.raises(DataError) as error:
        train_sentencepiece(read_documents(corpus)[:1], 5000, cache_dir=str(tmp_path))
    assert "\n" not in str(error.value) and "vocabulary_size" in str(error.value)


def test_packing_is_exact():
    stream = np.random.default_rng(0).integers(0, 1000, 1003).astype(np.int32)
    batches = list(token_batches(stream, 10, 4))
    assert len(batches) == 25  # 100 windows of 10; the 3-token tail is dropped
    ids = np.concatenate([b["token_ids"] for b in batches])
    assert ids.shape == (100, 10) and ids.dtype == np.int32
    np.testing.assert_array_equal(ids.reshape(-1), stream[:1000])
    assert all(b["padding_mask"].dtype == np.int32 and b["padding_mask"].all() for b in batches)
    pairs = list(token_batches(stream, 10, 4, targets=True, num_batches=7))
    assert len(pairs) == 7
    x = np.concatenate([b[0]["token_ids"] for b in pairs]).reshape(-1)
    y = np.concatenate([b[1] for b in pairs]).reshape(-1)
    np.testing.assert_array_equal(x, stream[:280])
    np.testing.assert_array_equal(y, stream[1:281])  # y is x shifted by one
    shuffled = [b["token_ids"] for b in token_batches(stream, 10, 4, shuffle=True, seed=3)]
    assert len(shuffled) == 25 and not np.array_equal(np.concatenate(shuffled), ids)
    assert sorted(map(tuple, np.concatenate(shuffled))) == sorted(map(tuple, ids))
    again = [b["token_ids"] for b in token_batches(stream, 10, 4, shuffle=True, seed=3)]
    np.testing.assert_array_equal(np.concatenate(again), np.concatenate(shuffled))
    assert len(list(token_batches(stream[:41], 10, 2, targets=True))) == 2  # 4 windows of 11
    assert len(list(token_batches(stream[:40], 10, 2, targets=True))) == 1  # only 3


def test_the_dataset_matches_the_batches_and_shuffles_by_seed():
    stream = np.arange(500, dtype=np.int32)
    ordered = [(x["token_ids"].numpy(), y.numpy()) for x, y in token_dataset(stream, 7, 3)]
    expected = list(token_batches(stream, 7, 3, targets=True))
    assert len(ordered) == len(expected) == 23
    for (x, y), (ex, ey) in zip(ordered, expected):
        np.testing.assert_array_equal(x, ex["token_ids"])
        np.testing.assert_array_equal(y, ey)

    def firsts(seed, num_batches=5):
        ds = token_dataset(stream, 7, 3, shuffle=True, seed=seed, num_batches=num_batches)
        return [x["token_ids"].numpy()[:, 0].tolist() for x, _ in ds]

    assert firsts(1) == firsts(1) != firsts(2)
    assert len(firsts(1)) == 5
    assert all(s % 7 == 0 for batch in firsts(1) for s in batch)  # whole windows only
    seen = {s for seed in range(4) for batch in firsts(seed, None) for s in batch}
    assert max(seen) == 490  # shuffled, the last windows (no whole batch in order) are used


def test_a_second_load_uses_the_caches(corpus, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(text_tokens.CACHE_ENV, str(tmp_path / "cache"))
    calls = {"train": 0, "encode": 0}

    def counting(name, function):
        def counted(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return counted

    monkeypatch.setattr(text_tokens, "_train_proto", counting("train", text_tokens._train_proto))
    monkeypatch.setattr(text_tokens, "_encode_documents",
                        counting("encode", text_tokens._encode_documents))
    first = load_text(corpus, vocabulary_size=VOCABULARY, sequence_length=16, progress=False)
    assert calls == {"train": 1, "encode": 3}
    assert sorted(os.listdir(tmp_path / "cache"))[0].startswith("sentencepiece-")
    caplog.set_level("INFO", logger="surgery.text_tokens")
    second = load_text(corpus, vocabulary_size=VOCABULARY, sequence_length=16, progress=False)
    assert calls == {"train": 1, "encode": 3}
    assert sum("loaded from cache" in r.getMessage() for r in caplog.records) == 4
    assert second.proto == first.proto and second.files == first.files
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(second.stream(split), first.stream(split))
    assert first.documents == {"train": 6, "validation": 1, "test": 1}
    x, y = next(first.batches("validation", 2, targets=True))
    assert x["token_ids"].shape == y.shape == (2, 16)
    third = load_text(corpus, vocabulary_size=VOCABULARY + 8, progress=False)
    assert calls == {"train": 2, "encode": 6}  # other settings, other cache entries
    assert third.vocabulary_size == VOCABULARY + 8


class _Characters:
    """A caller's tokenizer: one id per character, an end token, no start token."""

    def __init__(self, alphabet):
        self.vocabulary = ["</s>"] + sorted(set(alphabet))
        self.end_token_id = 0

    def get_vocabulary(self):
        return self.vocabulary

    def vocabulary_size(self):
        return len(self.vocabulary)

    def tokenize(self, texts):
        return [[self.vocabulary.index(c) for c in text] for text in texts]


def test_a_callers_tokenizer_is_used_and_cached(corpus, tmp_path, monkeypatch):
    chars = _Characters("".join(text for _, text in read_documents(corpus)))
    calls = []
    monkeypatch.setattr(text_tokens, "_train_proto", lambda *a: calls.append(a))
    text = load_text(corpus, tokenizer=chars, cache_dir=str(tmp_path / "cache"), progress=False)
    assert calls == [] and text.proto is None and text.tokenizer is chars
    docs = split_documents(read_documents(corpus))["test"]
    assert text.test.tolist() == chars.tokenize([docs[0][1]])[0] + [0]
    assert text.vocabulary_size == len(chars.vocabulary)
    assert len(os.listdir(tmp_path / "cache")) == 3  # the three streams, keyed by its vocabulary
    chars.end_token_id = None
    with pytest.raises(DataError, match="no end token"):
        tokenize_documents(docs, chars)
    chars.end_token_id, chars.sequence_length = 0, 128
    with pytest.raises(DataError, match="sequence_length=None"):
        tokenize_documents(docs, chars)


@pytest.mark.parametrize("make, expected", [
    (lambda tmp: str(tmp / "missing"), "no such folder"),
    (lambda tmp: str(tmp), "no text in"),
    (lambda tmp: str(tmp / "file.txt"), "a file, not a folder"),
])
def test_bad_folders_are_one_line_naming_the_fix(tmp_path, make, expected):
    _write(str(tmp_path), "file.txt", " \n")
    _write(str(tmp_path), "code.py", "x = 1\n")
    with pytest.raises(DataError) as error:
        read_documents(make(tmp_path))
    message = str(error.value)
    assert expected in message and "\n" not in message and "source='python_docs'" in message


def test_text_that_is_not_utf8_names_the_file(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError, match="latin1.txt: not UTF-8 text"):
        read_documents(str(tmp_path))


def test_python_docs_missing_gives_the_apt_get_hint(tmp_path, monkeypatch):
    missing = str(tmp_path / "no-docs")
    monkeypatch.setenv(text_data.PYTHON_DOCS_ENV, missing)
    with pytest.raises(DataError) as error:
        load_text("python_docs", cache_dir=str(tmp_path))
    message = str(error.value)
    assert "\n" not in message and missing in message
    assert "apt-get install -y python3.11-doc" in message and text_data.PYTHON_DOCS_ENV in message


@pytest.mark.skipif(not os.path.isdir(text_data.PYTHON_DOCS_DIR),
                    reason=f"{text_data.PYTHON_DOCS_DIR} absent: Debian's python3.11-doc "
                           f"package is not installed")
def test_the_python_docs_are_read_and_split_by_file(monkeypatch, tmp_path):
    monkeypatch.delenv(text_data.PYTHON_DOCS_ENV, raising=False)
    docs = read_documents("python_docs")
    assert 450 <= len(docs) <= 550
    assert all(path.endswith(".rst.txt") for path, _ in docs)
    assert "library/os.rst.txt" in dict(docs)
    split = split_documents(docs)
    sizes = [len(split[s]) for s in ("train", "validation", "test")]
    assert sum(sizes) == len(docs) and sizes[1] == sizes[2] == round(len(docs) * 0.05)
    paths = [path for part in split.values() for path, _ in part]
    assert len(set(paths)) == len(paths) == len(docs)
    proto = train_sentencepiece(split["validation"], 1000, cache_dir=str(tmp_path))
    stream = tokenize_documents(split["validation"], proto, cache_dir=str(tmp_path),
                                progress=False)
    assert len(stream) > 50_000 and (stream == 3).sum() == len(split["validation"])


CHILD = r"""
import json, sys
import keras_hub
import numpy as np
from surgery.text_data import load_text, tokenize_documents

corpus, cache, vocabulary = sys.argv[1], sys.argv[2], int(sys.argv[3])
text = load_text(corpus, vocabulary_size=vocabulary, sequence_length=16, cache_dir=cache,
                 progress=False)
llama = text.tokenizer
sample = ["The quick brown fox.\n  indented = 2\n", "Zürich ☃"]
again = load_text(corpus, tokenizer=keras_hub.models.LlamaTokenizer(proto=text.proto),
                  sequence_length=16, cache_dir=cache, progress=False)
backbone = keras_hub.models.Llama3Backbone(
    vocabulary_size=text.vocabulary_size, num_layers=1, num_query_heads=2,
    num_key_value_heads=1, hidden_dim=16, intermediate_dim=32)
lm = keras_hub.models.Llama3CausalLM(backbone, preprocessor=None)
lm.compile(sampler="greedy")
loss = lm.evaluate(text.dataset("validation", 2, num_batches=2), verbose=0, return_dict=True)
print("RESULT " + json.dumps({
    "class": type(llama).__name__,
    "ids": [list(map(int, ids)) for ids in llama.tokenize(sample)],
    "round_trip": [str(s) for s in llama.detokenize(llama.tokenize(sample))] == sample,
    "same_streams": all(np.array_equal(text.stream(s), again.stream(s))
                        for s in ("train", "validation", "test")),
    "specials": [llama.start_token_id, llama.end_token_id, llama.pad_token_id],
    "loss": float(loss["loss"]),
}))
"""


def test_the_trained_model_loads_as_a_keras_hub_llama_tokenizer(corpus, tmp_path):
    result = run_case("tensorflow", "-c", CHILD, corpus, tmp_path, VOCABULARY, timeout=300)
    assert result["class"] == "LlamaTokenizer"
    assert result["specials"] == [2, 3, 0]
    assert result["round_trip"] and result["same_streams"]
    proto = train_sentencepiece(split_documents(read_documents(corpus))["train"], VOCABULARY,
                                cache_dir=str(tmp_path))  # the child's cached model
    sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
    assert result["ids"] == sp.encode(["The quick brown fox.\n  indented = 2\n", "Zürich ☃"])
    assert np.isfinite(result["loss"]) and 0 < result["loss"] < 2 * np.log(VOCABULARY)
    assert json.dumps(result)  # plain values only
