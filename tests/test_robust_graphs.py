"""Graphs that once crashed planning, on tf-keras (Keras 3: tests/test_transformers.py):
a variable-length Embedding → LSTM → Dense model over integer token ids prunes exactly,
and an unknown composite layer is reported in ``plan.skipped`` and carried over as it
is (its config cannot rebuild it) while the rest of the model is pruned."""
import os
import sys

import pytest

import surgery
from surgery._backend import keras

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import robust_models  # noqa: E402


def test_variable_length_token_model_prunes_exactly():
    r = robust_models.run(keras, surgery, "token_lstm")
    assert r["deletions"] == ["dense", "emb", "lstm"]
    assert r["verify"] <= 1e-5 and r["moved"] > 1e-2, r
    assert r["params"][1] < r["params"][0]


def test_unknown_composite_layer_is_skipped_and_carried_over(caplog):
    r = robust_models.run(keras, surgery, "composite")
    assert r["skipped"]["block"] == "no layer rule for Block"
    assert "Block" in r["skipped"]["pre"]
    assert r["deletions"] == ["mid"] and r["carried"]
    assert r["verify"] <= 1e-5 and r["moved"] > 1e-2, r
    assert "cannot be rebuilt from its config" in caplog.text
