"""Keras 3 child processes for tests/test_keras3_pipeline.py (the suite's own process uses
tf-keras, and KERAS_BACKEND is read once per process).

``python tests/keras3_pipeline_cases.py make OUT`` imports Keras 3 first (then ``surgery``
for its data splits), trains a small residual CNN (``x + y`` shortcuts) on 16x16 digits,
writes ``OUT/model.keras``, ``OUT/model3.h5`` (the same model as a Keras 3 ``.h5``, which
Keras 3.15 itself cannot load back: its ``x + y`` operations), ``OUT/plain3.h5`` (an
untrained Keras 3 LeNet-5 as ``.h5``) and ``OUT/test.npz`` (the test split), and prints one JSON line (test accuracy).
``python tests/keras3_pipeline_cases.py load MODEL NPZ`` loads ``MODEL`` in plain Keras 3
(``surgery`` is never imported) and prints one JSON line: the class of the model, its
accuracy on ``NPZ`` and the largest difference between two predictions.
"""
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # DESIGN.md: oneDNN segfaults on odd widths
os.environ.pop("TF_USE_LEGACY_KERAS", None)  # this child is a Keras 3 process

import numpy as np  # noqa: E402
import keras  # noqa: E402  (Keras 3 first)
from keras import layers  # noqa: E402

SIZE = 16


def residual_cnn(classes: int = 10) -> keras.Model:
    """Stem, two residual blocks at 16 channels, a stride-2 stage with one more residual
    block at 32, global pooling, softmax; shortcuts written as ``x + y`` (Keras 3 ops)."""
    x = keras.Input((SIZE, SIZE, 1), name="image")
    h = layers.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(x)
    h = layers.ReLU(name="stem_relu")(layers.BatchNormalization(name="stem_bn")(h))
    for i in range(2):
        g = layers.Conv2D(16, 3, padding="same", use_bias=False, name=f"b{i}_conv1")(h)
        g = layers.ReLU(name=f"b{i}_relu1")(layers.BatchNormalization(name=f"b{i}_bn1")(g))
        g = layers.Conv2D(16, 3, padding="same", use_bias=False, name=f"b{i}_conv2")(g)
        g = layers.BatchNormalization(name=f"b{i}_bn2")(g)
        h = layers.ReLU(name=f"b{i}_out")(g + h)
    h = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="down")(h)
    h = layers.ReLU(name="down_relu")(layers.BatchNormalization(name="down_bn")(h))
    g = layers.Conv2D(32, 3, padding="same", use_bias=False, name="b2_conv")(h)
    g = layers.BatchNormalization(name="b2_bn")(g)
    h = layers.ReLU(name="b2_out")(g + h)
    h = layers.GlobalAveragePooling2D(name="pool")(h)
    return keras.Model(x, layers.Dense(classes, activation="softmax", name="head")(h),
                       name="residual_cnn")


def make(out: str, epochs: int = 12) -> None:
    from surgery.data import as_arrays, load_splits
    from surgery.models import lenet5

    keras.utils.set_random_seed(0)
    splits = load_splits("digits", image_size=(SIZE, SIZE), channels=1, batch_size=32, seed=0)
    model = residual_cnn(splits.num_classes)
    model.compile(keras.optimizers.Adam(3e-3), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(splits.train, epochs=epochs, verbose=0)
    x, y = as_arrays(splits.test)
    acc = float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == np.argmax(y, -1)))
    model.save(os.path.join(out, "model.keras"))
    model.save(os.path.join(out, "model3.h5"))  # Keras 3.15 cannot reload this one (x + y)
    lenet5(input_shape=(SIZE, SIZE, 1), keras_module=keras).save(os.path.join(out, "plain3.h5"))
    np.savez(os.path.join(out, "test.npz"), x=x, y=y)
    print(json.dumps({"accuracy": acc}))


def load(path: str, npz: str) -> None:
    data = np.load(npz)
    model = keras.models.load_model(path, compile=False)
    first = model.predict(data["x"], verbose=0)
    second = np.asarray(model(data["x"][:64], training=False))
    acc = float(np.mean(np.argmax(first, -1) == np.argmax(data["y"], -1)))
    print(json.dumps({"class": type(model).__module__, "accuracy": acc,
                      "surgery_imported": "surgery" in sys.modules,
                      "max_diff": float(np.max(np.abs(first[:64] - second)))}))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        load(sys.argv[2], sys.argv[3])
