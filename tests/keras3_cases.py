"""Keras 3 cases run in a child process by tests/test_keras3.py (KERAS_BACKEND and the
Keras generation of ``tf.keras`` are fixed per process, and the suite's own process uses
tf-keras). ``python tests/keras3_cases.py prune OUT`` imports Keras 3 first, then
``surgery``, prunes each case, writes ``OUT/<case>.keras`` and ``OUT/<case>.npz`` (input,
pruned outputs) and prints one JSON line of measurements; ``python tests/keras3_cases.py
load OUT`` loads the files in plain Keras 3 (no ``surgery``) and prints the output
differences.
"""
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # DESIGN.md: oneDNN segfaults on odd widths

import numpy as np  # noqa: E402
import keras  # noqa: E402  (Keras 3 first: the process has chosen before `surgery`)
from keras import layers, ops  # noqa: E402

CASES = ("mobilenetv2", "residual")


def randomize(model, seed=0):
    """Random weights with non-trivial BatchNormalization statistics, so that zeroing
    is visible and a wrong cut of beta/moving_mean shows."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = weights
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                               rng.normal(0, 0.2, beta.shape).astype("float32"),
                               rng.normal(0, 0.2, mean.shape).astype("float32"),
                               rng.uniform(0.5, 1.5, var.shape).astype("float32")])
        else:  # keep the initialiser's kernel (stable scale), random biases
            layer.set_weights(weights[:1] + [rng.normal(0, 0.1, w.shape).astype("float32")
                                             for w in weights[1:]])
    return model


def residual():
    """A small CNN with Keras 3 operations: ``x + y`` shortcuts, ``ops.relu6``,
    ``ops.hard_swish``, a scalar ``* 0.5``, a depthwise conv and a concatenation."""
    x = keras.Input((16, 16, 3))
    h = layers.Conv2D(16, 3, padding="same", name="stem")(x)
    h = ops.relu6(layers.BatchNormalization(name="stem_bn")(h))
    for i in range(2):
        g = layers.Conv2D(16, 3, padding="same", name=f"b{i}_conv")(h)
        g = layers.BatchNormalization(name=f"b{i}_bn")(g)
        h = ops.hard_swish(g + h)
    d = layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    a = layers.Conv2D(8, 1, name="pw_a")(d) * 0.5
    b = layers.ReLU(name="relu_b")(layers.Conv2D(8, 1, name="pw_b")(d))
    h = layers.Concatenate(name="cat")([a, b])
    h = layers.Conv2D(24, 3, strides=2, name="tail")(h)
    y = layers.GlobalAveragePooling2D()(layers.Activation("relu")(h))
    return keras.Model(x, layers.Dense(5, name="head")(y), name="residual")


def _width(layer) -> int:
    config = layer.get_config()
    return int(config.get("filters") or config["units"])


def build(case):
    keras.utils.set_random_seed(0)
    if case == "mobilenetv2":
        model = keras.applications.MobileNetV2(
            input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=5,
            classifier_activation=None)
    else:
        model = residual()
    return randomize(model)


def prune(out):
    import surgery
    from surgery._backend import tf
    from surgery.engine.zeroing import max_relative_difference

    report = {"legacy_env": os.environ.get("TF_USE_LEGACY_KERAS"),
              "tf_keras_is_keras3": tf.keras.Model is keras.Model}
    try:
        surgery.Surgeon  # noqa: B018  (kerassurgeon cannot work here: a clear error)
        report["surgeon"] = "loaded"
    except surgery.SurgeryError as err:
        report["surgeon"] = "SurgeryError: " + str(err)
    x = np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype("float32")
    for case in CASES:
        model = build(case)
        data = x if case == "mobilenetv2" else x[:, :16, :16]
        plan = surgery.plan(model, ratio=0.3)
        pruned = surgery.apply(model, plan)
        zeroed = surgery.zero_channels(model, plan.deletions)
        out_pruned = keras.ops.convert_to_numpy(pruned(data, training=False))
        report[case] = {
            "type": f"{type(pruned).__module__}.{type(pruned).__name__}",
            "verify": surgery.verify(model, pruned, plan, data),
            "moved": max_relative_difference(model(data, training=False),
                                             zeroed(data, training=False)),
            "params": [model.count_params(), pruned.count_params()],
            "flops": [surgery.count_flops(model), surgery.count_flops(pruned)],
            "groups": len(plan.groups), "deleted_layers": len(plan.deletions),
        }
        shifted = surgery.PrunePlan.from_deletions({
            name: sorted((c + 1) % _width(model.get_layer(name)) for c in channels)
            for name, channels in plan.deletions.items()}, plan.groups)
        wrong = surgery.apply(model, shifted)  # the oracle must see a wrong cut
        report[case]["verify_wrong_channels"] = surgery.verify(model, wrong, plan, data)
        pruned.save(os.path.join(out, f"{case}.keras"))
        np.savez(os.path.join(out, f"{case}.npz"), x=data, y=out_pruned)
    tiny = surgery.keras.Sequential([surgery.keras.Input((32, 32, 3)),
                                     surgery.keras.layers.Conv2D(2, 3)])
    try:
        surgery.verify(build("mobilenetv2"), tiny, plan, x)
        report["mixed"] = "accepted"
    except surgery.SurgeryError as err:
        report["mixed"] = "SurgeryError: " + str(err)[:60]
    print("RESULT " + json.dumps(report))


def load(out):
    report = {"surgery_imported": "surgery" in sys.modules}
    for case in CASES:
        model = keras.saving.load_model(os.path.join(out, f"{case}.keras"))
        saved = np.load(os.path.join(out, f"{case}.npz"))
        y = keras.ops.convert_to_numpy(model(saved["x"], training=False))
        report[case] = float(np.max(np.abs(y - saved["y"])) / np.max(np.abs(saved["y"])))
    print("RESULT " + json.dumps(report))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    {"prune": prune, "load": load}[sys.argv[1]](sys.argv[2])
