"""A keras-hub ViT classifier for the command line (Keras 3, run as a child process).

``make OUT``: a ``ViTBackbone`` (16x16x1 images, patch 8, 2 blocks, 4 heads, hidden 64,
MLP 128) under ``GlobalAveragePooling1D`` and ``Dense(10)``, trained one epoch on digits,
saved as ``OUT/vit.keras``. ``make_mha OUT``: tests/transformer_models.py's ViT (Keras's
``MultiHeadAttention``, 4 heads of width 8) the same way, as ``OUT/mha.keras``. ``load PATH``: the parameters and FLOPs of a saved (pruned)
model, loaded in this fresh process with ``import surgery``.
"""
import json
import os
import sys

import keras
import keras_hub

import surgery
from surgery import data as dg


def make(out: str) -> None:
    keras.utils.set_random_seed(0)
    splits = dg.load_splits("digits", image_size=(16, 16), channels=1, batch_size=32, seed=0)
    x, y = dg.as_arrays(splits.train)
    backbone = keras_hub.models.ViTBackbone(image_shape=(16, 16, 1), patch_size=8,
                                            num_layers=2, num_heads=4, hidden_dim=64,
                                            mlp_dim=128)
    inputs = keras.Input((16, 16, 1))
    pooled = keras.layers.GlobalAveragePooling1D()(backbone(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(pooled))
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = os.path.join(out, "vit.keras")
    model.save(path)
    print("RESULT " + json.dumps(dict(path=path, params=int(model.count_params()))))


def make_mha(out: str) -> None:
    import transformer_models as tm

    keras.utils.set_random_seed(0)
    splits = dg.load_splits("digits", image_size=(16, 16), channels=1, batch_size=32, seed=0)
    x, y = dg.as_arrays(splits.train)
    logits = tm.vit(keras, size=16, patch=4, channels=1, classes=10)
    model = keras.Model(logits.input, keras.layers.Activation("softmax")(logits.output))
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = os.path.join(out, "mha.keras")
    model.save(path)
    print("RESULT " + json.dumps(dict(path=path, params=int(model.count_params()))))


def load(path: str) -> None:
    model = keras.models.load_model(path, compile=False)
    print("RESULT " + json.dumps(dict(params=int(model.count_params()),
                                      flops=int(surgery.count_flops(model)))))


if __name__ == "__main__":
    {"make": make, "make_mha": make_mha, "load": load}[sys.argv[1]](sys.argv[2])
