"""Graphs that once crashed planning, on tf-keras (Keras 3: tests/test_transformers.py):
a variable-length Embedding → LSTM → Dense model over integer token ids prunes exactly,
and an unknown composite layer is reported in ``plan.skipped`` and carried over as it
is (its config cannot rebuild it) while the rest of the model is pruned, and a wrapper
around a layer no rule knows stops its groups with a reason."""
import os
import sys

import numpy as np

import surgery
from surgery._backend import keras

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import robust_models  # noqa: E402


def test_variable_length_token_model_prunes_exactly():
    r = robust_models.run(keras, surgery, "token_lstm")
    assert r["deletions"] == ["dense", "emb", "lstm"]
    assert r["verify"] <= 1e-5 and r["moved"] > 1e-2, r
    assert r["params"][1] < r["params"][0]


def test_unknown_composite_layer_is_skipped_and_never_shared():
    """Its config cannot rebuild it, so a copy would share it (weights included) with the
    input model: ``apply`` refuses, naming the layer and the way out."""
    r = robust_models.run(keras, surgery, "composite")
    assert r["skipped"]["block"] == "no layer rule for Block"
    assert "Block" in r["skipped"]["pre"]
    assert r["deletions"] == ["mid"]
    assert "'block' (Block) cannot be rebuilt from its config" in r["refused"]
    assert "get_config" in r["refused"] and r["unchanged"]


def test_wrapper_around_a_layer_without_rule_stops_its_groups_with_a_reason():
    L = keras.layers

    class Odd(L.Layer):
        def build(self, shape):
            self.w = self.add_weight(name="w", shape=(shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.w

    x = keras.Input((5, 6))
    h = L.TimeDistributed(Odd(), name="td")(L.Dense(8, name="a")(x))
    h = L.Dense(7, activation="relu", name="b")(h)
    model = keras.Model(x, L.Dense(2, name="out")(L.Flatten()(h)))
    p = surgery.plan(model, ratio=0.5)
    assert "no rule for the wrapped Odd" in p.skipped["td"] and "td" in p.skipped["a"]
    assert sorted(p.deletions) == ["b"]
    xs = np.random.default_rng(0).normal(size=(2, 5, 6)).astype("float32")
    assert surgery.verify(model, surgery.apply(model, p), p, xs) <= 1e-5
