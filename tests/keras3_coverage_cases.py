"""The layer-rule coverage models on Keras 3, run in a child process by
tests/test_keras3_coverage.py.

``python tests/keras3_coverage_cases.py OUT.json [CASE ...]`` imports Keras 3 first
(backend from ``KERAS_BACKEND``), then ``surgery``, builds every case of
tests/coverage_models.py with Keras 3 layers and ``keras.ops`` in float64, plus Keras-3
only cases (``ops.transpose``, ``ops.pad``, a Sequential model, models nesting a
Sequential or functional model), and writes per case: the plan's deletions and skips,
the verify error, how far zeroing moved the outputs, parameters before and after, and
whether the output shape was kept (or the error, for the parent to report).
"""
import json
import os
import sys
import traceback

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # DESIGN.md: oneDNN segfaults on odd widths

import numpy as np  # noqa: E402
import keras  # noqa: E402  (Keras 3 first: the process has chosen before `surgery`)
from keras import layers as L, ops  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import coverage_models as cm  # noqa: E402

K3 = cm.Stack(keras, {"relu": ops.relu, "relu6": ops.relu6, "sigmoid": ops.sigmoid,
                      "swish": ops.swish, "silu": ops.silu, "add": ops.add},
              __import__("keras.src.applications.convnext",
                         fromlist=["LayerScale"]).LayerScale)


def ops_transpose(K):
    inp = L.Input((8, 6, 3))
    x = L.Conv2D(6, 3, padding="same", name="producer")(inp)
    x = L.Conv2D(5, 3, name="consumer")(ops.transpose(x, (0, 2, 1, 3)))
    return cm.Case(cm.make(K, inp, cm.head(K, L.Flatten()(x))), cm.normal(2, 8, 6, 3),
                   ("producer", "consumer"))


def ops_pad(K):
    inp = L.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", name="producer")(inp)
    x = ops.pad(ops.relu(x), ((0, 0), (1, 1), (2, 0), (0, 0)))
    x = L.Conv2D(5, 3, name="consumer")(x)
    return cm.Case(cm.make(K, inp, cm.head(K, L.GlobalAveragePooling2D()(x))),
                   cm.normal(2, 8, 8, 3), ("producer", "consumer"))


def sequential(K):
    model = keras.Sequential([
        L.Input((8, 8, 3)), L.Conv2D(6, 3, padding="same", name="conv1"),
        L.BatchNormalization(name="bn1"), L.ReLU(), L.Conv2D(5, 3, name="conv2"),
        L.GlobalAveragePooling2D(), L.Dense(4, name="fc"), L.Dense(3, name="classifier")])
    return cm.Case(cm.randomize(model), cm.normal(2, 8, 8, 3), ("conv1", "conv2", "fc"))


def _backbone(name):
    inp = L.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", name=f"{name}_conv")(inp)
    x = L.ReLU()(L.BatchNormalization(name=f"{name}_bn")(x))
    return keras.Model(inp, L.Conv2D(6, 1, name=f"{name}_pw")(x) + x, name=name)


def nested_functional(K):
    """A functional model calling a functional submodel, then a Sequential head."""
    inp = L.Input((8, 8, 3))
    x = _backbone("inner")(inp)
    x = keras.Sequential([L.Input((8, 8, 6)), L.Conv2D(5, 3, name="head_conv"), L.ReLU(),
                          L.GlobalAveragePooling2D()], name="head")(x)
    model = keras.Model(inp, L.Dense(3, name="classifier")(x))
    return cm.Case(cm.randomize(model), cm.normal(2, 8, 8, 3),
                   ("inner_conv", "inner_pw", "head_conv"))


def nested_mobilenet(K):
    """The usual fine-tuning model: Sequential([MobileNetV2, GAP, Dense])."""
    keras.backend.set_floatx("float32")
    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35,
                                              include_top=False, weights=None)
    model = keras.Sequential([L.Input((32, 32, 3)), backbone, L.GlobalAveragePooling2D(),
                              L.Dense(10, name="classifier")])
    return cm.Case(cm.randomize(model), cm.normal(2, 32, 32, 3, dtype="float32"),
                   ("block_1_expand",), 1e-5)


EXTRA = {"ops_transpose": ops_transpose, "ops_pad": ops_pad, "sequential": sequential,
         "nested_functional": nested_functional, "nested_mobilenet": nested_mobilenet}
NESTED = ("nested_functional", "nested_mobilenet")


def run_case(name):
    import surgery
    from surgery.engine.zeroing import max_relative_difference

    keras.backend.clear_session()
    keras.backend.set_floatx("float64")
    keras.utils.set_random_seed(0)
    builders = {**cm.CASES, **cm.XFAIL, **EXTRA,
                "permute_move": lambda K: cm.permute(K, (3, 1, 2))}
    case = builders[name](K3)
    model, x = case.model, case.x
    result = {"type": type(model).__name__}
    p = surgery.plan(model, ratio=0.5)
    result.update(deletions=p.deletions, skipped=p.skipped, groups=p.groups,
                  missing=[n for n in case.expect if not p.deletions.get(n)])
    if name == "permute_move":
        return result
    if name in NESTED:
        flat = surgery.flatten_model(model)
        result["flat_layers"] = [layer.name for layer in flat.layers]
        result["flat_difference"] = max_relative_difference(model(x), flat(x))
    pruned = surgery.apply(model, p)
    zeroed = surgery.zero_channels(model, p.deletions)
    result.update(
        verify=surgery.verify(model, pruned, p, x), tol=case.tol,
        moved=max_relative_difference(model(x), zeroed(x)),
        params=[model.count_params(), pruned.count_params()],
        pruned_type=f"{type(pruned).__module__}.{type(pruned).__name__}",
        same_output_shape=tuple(pruned(x).shape) == tuple(model(x).shape))
    return result


def main(target, names):
    results = {}
    for name in names:
        try:
            results[name] = run_case(name)
        except Exception:  # noqa: BLE001 — reported per case to the parent
            results[name] = {"error": traceback.format_exc()[-3000:]}
    with open(target, "w") as f:
        json.dump(results, f, default=str)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or
         [*cm.CASES, *cm.XFAIL, *EXTRA, "permute_move"])
