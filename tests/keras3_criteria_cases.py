"""Keras 3 criteria cases, run in a child process per backend by
tests/test_keras3_criteria.py (``KERAS_BACKEND`` is read once, at import).

``python tests/keras3_criteria_cases.py`` imports Keras 3 first, then ``surgery``, scores
the small CNN of :func:`build` with every criterion, computes NumPy references for the
weight-based ones, checks the refusals (tfmot sparsity, mixed generations, symbolic data)
and, with ``--flops``, plans ``flops_target=0.5`` on MobileNetV2 (alpha 0.35, 64 px) and
a residual CNN; it prints one ``RESULT {json}`` line. :func:`build`, :func:`data` and
:data:`LAYERS` import no Keras, so the parent builds the very same model with tf-keras
as the reference for the data-driven criteria.
"""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
LAYERS = ("c1", "c2", "c3", "dw")
CRITERIA = ("l1", "l2", "bn_gamma", "fpgm", "apoz", "activation", "taylor", "thinet")
DEAD = {"c2": 5, "c3": 2}  # filters whose activation is exactly zero on every input
SMALL_GAMMA = ("c1", 3)  # bn1's gamma is tiny on this channel


def build(keras):
    """A small CNN (any Keras generation: pass its module) with seeded weights; filter 5
    of ``c2`` is dead after its ReLU and filter 2 of ``c3`` is zero."""
    layers = keras.layers
    x = keras.Input((16, 16, 3))
    h = layers.Conv2D(8, 3, padding="same", name="c1")(x)
    h = layers.ReLU(name="r1")(layers.BatchNormalization(name="bn1")(h))
    h = layers.Conv2D(12, 3, padding="same", activation="relu", name="c2")(h)
    h = layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = layers.Conv2D(6, 1, name="c3")(h)
    h = layers.GlobalAveragePooling2D(name="gap")(layers.ReLU(name="r3")(h))
    model = keras.Model(x, layers.Dense(4, name="head")(h), name="small")
    rng = np.random.default_rng(1)
    for layer in model.layers:
        weights = layer.get_weights()
        if layer.name == "bn1":
            gamma = rng.uniform(0.5, 1.5, 8)
            gamma[SMALL_GAMMA[1]] = 0.05
            weights = [gamma, rng.normal(0, 0.2, 8), rng.normal(0, 0.2, 8),
                       rng.uniform(0.5, 1.5, 8)]
        elif weights:
            weights = [rng.normal(0, 0.3, w.shape) for w in weights]
        if layer.name == "c2":
            weights[0][..., DEAD["c2"]] = 0.0
            weights[1][DEAD["c2"]] = -1.0
        if layer.name == "c3":
            weights[0][..., DEAD["c3"]] = 0.0
            weights[1][DEAD["c3"]] = 0.0
        if weights:
            layer.set_weights([np.asarray(w, "float32") for w in weights])
    return model


def data(n=24):
    rng = np.random.default_rng(2)
    return (rng.normal(size=(n, 16, 16, 3)).astype("float32"),
            rng.integers(0, 4, n).astype("int64"))


def _error(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001  (the parent checks the type and text)
        return f"{type(e).__name__}: {e}"
    return "no error"


def _filters(model, name):
    """NumPy reference: one row per output channel."""
    layer = model.get_layer(name)
    kernel = layer.get_weights()[0]
    if name == "dw":  # (kh, kw, c, 1): output channel c uses kernel[..., c, 0]
        return np.moveaxis(kernel[..., 0], -1, 0).reshape(kernel.shape[2], -1)
    return np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1)


def references(model):
    out = {}
    for name in LAYERS:
        w = _filters(model, name).astype(np.float64)
        dist = np.sqrt(np.maximum(((w[:, None, :] - w[None, :, :]) ** 2).sum(-1), 0))
        out[name] = {"l1": np.abs(w).sum(1), "l2": np.sqrt((w ** 2).sum(1)),
                     "fpgm": dist.sum(1)}
        out[name]["bn_gamma"] = (np.abs(model.get_layer("bn1").get_weights()[0])
                                 if name == "c1" else out[name]["l1"])
    return out


def criteria_results(keras, surgery):
    from surgery.pruning.criteria import channel_scores

    model, xy = build(keras), data()
    refs = references(model)
    result = {"scores": {}, "reference_error": {}}
    for criterion in CRITERIA:
        scores = channel_scores(model, list(LAYERS), criterion, data=xy, n_locations=64)
        result["scores"][criterion] = {k: v.tolist() for k, v in scores.items()}
        if criterion in refs["c1"]:
            result["reference_error"][criterion] = max(
                float(np.max(np.abs(scores[n] - refs[n][criterion]) /
                             np.max(np.abs(refs[n][criterion])))) for n in LAYERS)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        ds = tf.data.Dataset.from_tensor_slices(xy).batch(5)
        result["dataset_apoz"] = {k: v.tolist() for k, v in channel_scores(
            model, list(LAYERS), "apoz", data=ds).items()}
        result["dataset_taylor"] = {k: v.tolist() for k, v in channel_scores(
            model, list(LAYERS), "taylor", data=ds).items()}
    return model, result


def refusals(keras, surgery, model):
    import tf_keras

    from surgery.pipeline import regularizers, sparsity
    from surgery.pruning.criteria import channel_scores

    x, _ = data(4)
    other = build(tf_keras)
    plan = surgery.plan(model, ratio=0.25)
    return {
        "sparsity_wrap": _error(lambda: sparsity.prune_low_magnitude_model(model)),
        "sparsity_callbacks": _error(lambda: sparsity.pruning_callbacks()),
        "sparsity_unstructured": _error(lambda: sparsity.prune_unstructured(model, ratio=.5)),
        "penalties": _error(lambda: regularizers.add_penalties(model, l1=1e-4)),
        "tfmot_after": "tensorflow_model_optimization" in sys.modules,
        "verify_mixed": _error(lambda: surgery.verify(model, other, plan, x)),
        "verify_symbolic": _error(lambda: surgery.verify(
            model, surgery.apply(model, plan), plan, tf_keras.Input((16, 16, 3)))),
        "scores_symbolic": _error(lambda: channel_scores(
            model, ["c1"], "apoz", data=(keras.Input((16, 16, 3)), None))),
        "scores_tf_keras_layer": _error(lambda: channel_scores(model, [other.get_layer("c1")], "l1")),
    }


def flops_targets(keras, surgery):
    sys.path.insert(0, HERE)
    import keras3_cases

    keras.utils.set_random_seed(0)
    models = {"mobilenetv2": keras.applications.MobileNetV2(
        input_shape=(64, 64, 3), alpha=0.35, weights=None, classes=5),
        "residual": keras3_cases.residual()}
    out = {}
    for name, model in models.items():
        keras3_cases.randomize(model)
        p = surgery.plan(model, flops_target=0.5)
        pruned = surgery.apply(model, p)
        out[name] = {"reached": 1 - surgery.count_flops(pruned) / surgery.count_flops(model),
                     "estimate": p.settings["flops_removed"]}
    return out


def main():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    sys.path.insert(0, os.path.dirname(HERE))
    import keras  # Keras 3 first: the process has chosen before `surgery`

    import surgery

    report = {"backend": keras.backend.backend(),
              "tfmot_on_import": "tensorflow_model_optimization" in sys.modules}
    model, report["criteria"] = criteria_results(keras, surgery)
    report["refusals"] = refusals(keras, surgery, model)
    if "--flops" in sys.argv:
        report["flops"] = flops_targets(keras, surgery)
    print("RESULT " + json.dumps(report))


if __name__ == "__main__":
    main()
