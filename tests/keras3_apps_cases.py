"""``keras.applications`` models of Keras 3, pruned in a child process by
tests/test_keras3_applications.py (one process per backend: ``KERAS_BACKEND`` is read once
at import, and the suite's own process uses tf-keras).

``python tests/keras3_apps_cases.py BACKEND [MODEL ...]`` (all of the backend's models by
default; ``_families`` alone: none) imports Keras 3 first, then ``surgery``, and prints
the ``keras.applications`` families next to those ``MODELS`` covers. It builds each model
(weights=None, a small input, 3 classes, logits), gives it random non-trivial
BatchNormalization statistics, prunes it at ratio 0.3 and prints one ``RESULT {json}``
line per model with the oracle's difference (``verify``), how far pruning moved the
outputs (``moved``), parameters before/after and seconds taken (or ``error``). On
TensorFlow the models are built and run in float64, so that only a wrong cut, not
rounding, can make ``verify`` large.
"""
import json
import os
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # DESIGN.md: oneDNN segfaults on odd widths

import numpy as np  # noqa: E402
import keras  # noqa: E402  (Keras 3 first: the process has chosen before `surgery`)

A = keras.applications
HEAD = dict(weights=None, classes=3, classifier_activation=None)


#: one model per ``keras.applications`` family (ResNet: v1 and v2): the application,
#: the smallest input side it accepts, and its options
MODELS = {
    "ConvNeXtTiny": (A.ConvNeXtTiny, 32, {}),
    "DenseNet121": (A.DenseNet121, 32, {}),
    "EfficientNetB0": (A.EfficientNetB0, 32, {}),
    "EfficientNetV2B0": (A.EfficientNetV2B0, 32, {}),
    "InceptionResNetV2": (A.InceptionResNetV2, 75, {}),
    "InceptionV3": (A.InceptionV3, 75, {}),
    "MobileNet": (A.MobileNet, 32, {"alpha": 0.25}),
    "MobileNetV2": (A.MobileNetV2, 32, {"alpha": 0.35}),
    "MobileNetV3Small": (A.MobileNetV3Small, 32, {"alpha": 0.75}),
    "NASNetMobile": (A.NASNetMobile, 32, {}),
    "ResNet50": (A.ResNet50, 32, {}),
    "ResNet50V2": (A.ResNet50V2, 32, {}),
    "VGG16": (A.VGG16, 32, {}),
    "Xception": (A.Xception, 71, {}),
}
#: family modules covered by another one's model (VGG19 is VGG16 with three more convs)
SAME_FAMILY = {"vgg19": "vgg16"}
#: the models also pruned on JAX and PyTorch (float32): the graph adapter is the same on
#: every backend, so these three (LayerNorm and depthwise 7x7, inverted residuals,
#: bottleneck residuals) check each backend's execution; DenseNet121 and EfficientNetB0
#: took 122 s and 85 s on JAX here, almost all of it XLA compiling each new shape
OTHER_BACKENDS = ("ConvNeXtTiny", "MobileNetV2", "ResNet50")
#: models (cheap ones) for which a cut of the wrong channels must be caught by ``verify``
WRONG_CUT = ("MobileNet", "MobileNetV2")


def randomize(model, seed=0):
    """Random biases and non-trivial BatchNormalization statistics (kernels keep their
    initialiser's scale), so that zeroing is visible and a wrong cut of beta/moving_mean
    shows; Normalization layers keep a positive variance and LayerScale a moderate gamma."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        kind = type(layer).__name__
        if kind == "BatchNormalization":  # [gamma] [beta] moving_mean moving_variance
            shape = weights[-1].shape
            new = ([rng.uniform(0.5, 1.5, shape)] if layer.scale else []) \
                + ([rng.normal(0, 0.2, shape)] if layer.center else []) \
                + [rng.normal(0, 0.2, shape), rng.uniform(0.5, 1.5, shape)]
        elif kind == "Normalization":
            new = [rng.normal(0, 0.2, weights[0].shape),
                   rng.uniform(0.5, 1.5, weights[1].shape)] + weights[2:]
        elif kind == "LayerScale":
            new = [rng.uniform(0.5, 1.5, w.shape) for w in weights]
        else:
            new = weights[:1] + [rng.normal(0, 0.1, w.shape) for w in weights[1:]]
        layer.set_weights([np.asarray(n, w.dtype) for n, w in zip(new, weights)])
    return model


def run(name, dtype):
    import surgery
    from surgery.engine.zeroing import max_relative_difference

    keras.utils.set_random_seed(0)
    build, size, options = MODELS[name]
    model = randomize(build(input_shape=(size, size, 3), **HEAD, **options))
    x = np.random.default_rng(1).normal(size=(2,) + tuple(model.input_shape[1:]))
    x = x.astype(dtype)
    plan = surgery.plan(model, ratio=0.3)
    pruned = surgery.apply(model, plan)
    result = {
        "dtypes": sorted({str(t.dtype) for t in model.inputs + pruned.outputs}
                         | {str(w.dtype) for w in pruned.weights if "int" not in str(w.dtype)}),
        "verify": surgery.verify(model, pruned, plan, x),
        # pruned equals the zeroed original (``verify``), so this is also how far zeroing
        # the planned channels moved the outputs (one zero_channels clone fewer)
        "moved": max_relative_difference(model(x, training=False),
                                         pruned(x, training=False)),
        "params": [model.count_params(), pruned.count_params()],
        "output_shape": [list(model.output_shape), list(pruned.output_shape)],
        "skipped": len(plan.skipped), "groups": len(plan.groups),
    }
    if name in WRONG_CUT:  # the oracle must see channels shifted by one
        shifted = surgery.PrunePlan.from_deletions({
            layer: sorted((c + 1) % _width(model.get_layer(layer)) for c in channels)
            for layer, channels in plan.deletions.items()}, plan.groups)
        wrong = surgery.apply(model, shifted)
        result["verify_wrong_channels"] = surgery.verify(model, wrong, plan, x)
    return result


def _width(layer) -> int:
    config = layer.get_config()
    return int(config.get("filters") or config["units"])


def families() -> dict:
    """``{"all": the modules of keras.applications' model functions, "covered": those of
    MODELS}`` (``SAME_FAMILY`` applied to both)."""
    def family(fn):
        module = fn.__module__.rsplit(".", 1)[-1]
        return SAME_FAMILY.get(module, module)

    every = {family(getattr(A, n)) for n in dir(A) if n[:1].isupper()}
    return {"all": sorted(every), "covered": sorted({family(m[0]) for m in MODELS.values()})}


def main(backend, names):
    dtype = "float64" if backend == "tensorflow" else "float32"
    keras.config.set_floatx(dtype)
    print("RESULT " + json.dumps({"model": "_families", **families()}), flush=True)
    for name in names or (MODELS if backend == "tensorflow" else OTHER_BACKENDS):
        if name == "_families":  # only the families line
            continue
        start, cpu = time.time(), time.process_time()
        try:
            result = run(name, dtype)
        except Exception as err:  # noqa: BLE001 — report it for this model, go on
            result = {"error": f"{type(err).__name__}: {err}"[:2000],
                      "trace": traceback.format_exc()[-3000:]}
        result.update(model=name, backend=keras.backend.backend(),
                      seconds=round(time.time() - start, 1),
                      cpu_seconds=round(time.process_time() - cpu, 1))
        print("RESULT " + json.dumps(result), flush=True)
        keras.backend.clear_session()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.environ.get("KERAS_BACKEND") != sys.argv[1]:
        sys.exit(f"run with KERAS_BACKEND={sys.argv[1]} (Keras reads it at import)")
    main(sys.argv[1], sys.argv[2:])
