"""Adaptive BatchNormalization checks shared by tf-keras and the Keras 3 backends.

tests/test_batchnorm.py calls :func:`run_all` with tf-keras in its own process and runs this
file as a child (``python tests/batchnorm_cases.py``) under each Keras 3 backend its parent
sets in ``KERAS_BACKEND``; the child imports Keras 3 before ``surgery`` and prints one
``RESULT {json}`` line. Two oracles, both independent of the implementation:

* ``numpy``: a chain of 1×1 convolutions whose training-mode forward pass (each BN
  normalising by its batch's mean and biased variance) is recomputed in numpy; the moving
  statistics must equal the mean and variance of each BN input over all batches.
* ``fixed point``: with the whole data as one batch, a recalibrated model must give the
  same outputs in inference mode as in training mode (they differ only in which statistics
  BN uses), on a pruned MobileNetV2 with stale random statistics.

* ``candidates``: ``surgery.plan(flops_target=0.3, candidates=3, data=x)`` reaches the
  budget with an exact cut, and its winner's agreement, recomputed here, is the highest.
  Every candidate, scored on the zeroed stand-in, gives the outputs and the score of its
  real cut (recalibrated too), and on JAX later candidates compile nothing.

The first two also check that every non-BN weight and BN's gamma/beta are unchanged, and that the
statistics were wrong before (so each check can fail).
"""
import contextlib
import json
import logging
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _numpy(keras, value):
    return keras.ops.convert_to_numpy(value) if hasattr(keras, "ops") else value.numpy()


def _non_stat_weights(keras, model):
    """Every weight except BN moving statistics, as numpy arrays keyed by layer/index."""
    out = {}
    for layer in model.layers:
        stats = {id(getattr(layer, n, None)) for n in ("moving_mean", "moving_variance")}
        for i, w in enumerate(layer.weights):
            if id(w) not in stats:
                out[f"{layer.name}/{i}"] = np.array(_numpy(keras, w))
    return out


def _stale(keras, model, seed=0):
    """Random moving statistics (as if the layers' inputs had changed under them)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__.startswith("BatchNormalization"):
            shape = tuple(layer.moving_mean.shape)
            layer.moving_mean.assign(rng.normal(0, 2, shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.1, 4.0, shape).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.5, shape).astype("float32"))


def numpy_oracle(keras, surgery):
    """Moving statistics against a numpy recomputation of the BN inputs (the model's image
    size left open, so the probe counts positions only when it runs)."""
    layers = keras.layers
    x = keras.Input((None, None, 3))
    h = layers.Conv2D(4, 1, name="c1")(x)
    h = layers.BatchNormalization(name="bn1", epsilon=1e-3)(h)
    h = layers.ReLU(name="r1")(h)
    h = layers.Conv2D(6, 1, name="c2")(h)
    h = layers.BatchNormalization(name="bn2", epsilon=1e-3)(h)
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(x, layers.Dense(3, name="head")(h))
    _stale(keras, model)
    rng = np.random.default_rng(1)
    data = rng.normal(1.5, 3.0, (40, 5, 5, 3)).astype("float32")
    before = _non_stat_weights(keras, model)
    stale_mean = np.array(_numpy(keras, model.get_layer("bn2").moving_mean))

    w = {n: [np.asarray(_numpy(keras, v), np.float64) for v in model.get_layer(n).weights]
         for n in ("c1", "bn1", "c2")}

    def bn_train(a, gamma, beta):
        m, v = a.mean((0, 1, 2)), a.var((0, 1, 2))
        return gamma * (a - m) / np.sqrt(v + 1e-3) + beta

    ins1, ins2 = [], []
    for start in range(0, 32, 16):  # batches=2 of 16: the last 8 examples are never read
        xb = data[start:start + 16].astype(np.float64)
        a1 = xb @ w["c1"][0][0, 0] + w["c1"][1]
        h1 = np.maximum(bn_train(a1, w["bn1"][0], w["bn1"][1]), 0)
        ins1.append(a1)
        ins2.append(h1 @ w["c2"][0][0, 0] + w["c2"][1])
    assert surgery.recalibrate_batchnorm(model, data, batches=2, batch_size=16) is model
    errors = {}
    for name, ins in (("bn1", ins1), ("bn2", ins2)):
        a = np.concatenate(ins)
        layer = model.get_layer(name)
        errors[name] = [float(np.max(np.abs(_numpy(keras, layer.moving_mean) - a.mean((0, 1, 2))))),
                        float(np.max(np.abs(_numpy(keras, layer.moving_variance)
                                            - a.var((0, 1, 2))) / a.var((0, 1, 2))))]
    after = _non_stat_weights(keras, model)
    return dict(stat_errors=errors,
                others_unchanged=sorted(before) == sorted(after) and all(
                    np.array_equal(before[k], after[k]) for k in before),
                n_other_weights=len(before),
                stale_error=float(np.max(np.abs(stale_mean - np.concatenate(ins2).mean(
                    (0, 1, 2))))))


def fixed_point(keras, surgery, kwargs):
    """Inference == training outputs after recalibrating on the same single batch."""
    from surgery.models import mobilenet_v2

    keras.utils.set_random_seed(0)
    model = mobilenet_v2(input_shape=(32, 32, 3), classes=10, alpha=0.35, l1=0.0,
                         settings=((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2)),
                         last_channels=64, **kwargs)
    _stale(keras, model)
    pruned = surgery.apply(model, surgery.plan(model, ratio=0.3))
    x = np.random.default_rng(2).normal(0.5, 1.0, (48, 32, 32, 3)).astype("float32")

    def gap():
        inference = np.asarray(_numpy(keras, pruned(x, training=False)), np.float64)
        train = np.asarray(_numpy(keras, pruned(x, training=True)), np.float64)
        return float(np.max(np.abs(inference - train)) / np.max(np.abs(train)))

    before_gap = gap()  # note: tf-keras's training call moves the statistics; irrelevant
    before = _non_stat_weights(keras, pruned)
    surgery.recalibrate_batchnorm(pruned, x, batches=1, batch_size=len(x))
    after = _non_stat_weights(keras, pruned)
    n_bn = sum(type(l).__name__.startswith("BatchNormalization") for l in pruned.layers)
    return dict(gap_before=before_gap, gap_after=gap(), n_bn=n_bn,
                params=[model.count_params(), pruned.count_params()],
                others_unchanged=sorted(before) == sorted(after) and all(
                    np.array_equal(before[k], after[k]) for k in before))


def candidates(keras, surgery, kwargs):
    """``plan(flops_target=, candidates=3, data=)``: the budget, the winner's score
    recomputed here (cut, recalibrate, top-1 agreement), exactness and the zeroing oracle;
    every candidate's score against cutting it for real (:func:`_against_cuts`)."""
    from surgery.calibration import candidates as selection
    from surgery.engine.zeroing import max_relative_difference, zero_channels
    from surgery.models import mobilenet_v2

    keras.utils.set_random_seed(0)
    model = mobilenet_v2(input_shape=(32, 32, 3), classes=10, alpha=0.35, l1=0.0,
                         settings=((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2)),
                         last_channels=64, **kwargs)
    _stale(keras, model)
    x = np.random.default_rng(3).normal(0.0, 1.0, (64, 32, 32, 3)).astype("float32")
    seen, real = [], selection.choose_candidate

    def spy(graph, plans, data, **options):
        seen.extend(plans)
        return real(graph, plans, data, **options)

    selection.choose_candidate = spy
    try:
        best = surgery.plan(model, flops_target=0.3, scope="global", candidates=3, data=x)
    finally:
        selection.choose_candidate = real
    pruned = surgery.apply(model, best)
    verify = float(surgery.verify(model, pruned, best, x[:8]))
    moved = float(max_relative_difference(model(x[:8], training=False),
                                          zero_channels(model, best.deletions)(
                                              x[:8], training=False)))
    surgery.recalibrate_batchnorm(pruned, x, batches=30, batch_size=32)
    agree = float(np.mean(np.argmax(_numpy(keras, pruned(x, training=False)), -1)
                          == np.argmax(_numpy(keras, model(x, training=False)), -1)))
    return dict(flops_removed=best.settings["flops_removed"], verify=verify, moved=moved,
                scores=best.settings["candidate_scores"], chosen=best.settings["candidate"],
                recomputed=agree, **_against_cuts(keras, surgery, model, seen, x))


def _against_cuts(keras, surgery, model, plans, x) -> dict:
    """Each plan zeroed on one :class:`StandIn` and recalibrated there, against the plan cut
    for real (``surgery.apply``), recalibrated and run eagerly, as candidates were scored
    before the stand-in: their outputs' relative gap, the real cut's top-1 agreement with
    the original (the score it had), and, on JAX, how many XLA computations each plan's
    turn on the stand-in compiled (dtype conversions of assigned weights aside)."""
    from surgery.calibration.stand_in import StandIn
    from surgery.engine.graph import resolve

    reference = np.argmax(_numpy(keras, model(x, training=False)), -1)
    stand_in = StandIn(resolve(model))
    gaps, cut_scores, compiles = [], [], []
    for plan in plans:
        with _compile_log(keras) as log:
            with stand_in.zeroed(plan):
                stand_in.recalibrate(x, 30, batch_size=32)
                zeroed = stand_in.outputs(x)[0]
        compiles.append(None if log is None else sum(
            m.startswith("Compiling") and "convert_element_type" not in m for m in log))
        cut = surgery.recalibrate_batchnorm(surgery.apply(model, plan), x, batches=30,
                                            batch_size=32)
        outputs = np.asarray(_numpy(keras, cut(x, training=False)), np.float64)
        gaps.append(float(np.max(np.abs(zeroed - outputs)) / np.max(np.abs(outputs))))
        cut_scores.append(round(float(np.mean(np.argmax(outputs, -1) == reference)), 6))
    return dict(cut_scores=cut_scores, gaps=gaps, compiles=compiles)


@contextlib.contextmanager
def _compile_log(keras):
    """Within it, the messages of JAX's compile log (``None`` off JAX)."""
    if keras.backend.backend() != "jax":
        yield None
        return
    import jax  # only on the JAX backend

    messages, handler = [], logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("jax").addHandler(handler)
    try:
        with jax.log_compiles():
            yield messages
    finally:
        logging.getLogger("jax").removeHandler(handler)


def run_all(keras, surgery, model_kwargs=None) -> dict:
    return dict(numpy=numpy_oracle(keras, surgery),
                fixed=fixed_point(keras, surgery, model_kwargs or {}),
                candidates=candidates(keras, surgery, model_kwargs or {}))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.pop("TF_USE_LEGACY_KERAS", None)
    sys.path.insert(0, os.path.dirname(HERE))
    import keras as keras3  # noqa: E402  (Keras 3 first)

    import surgery as _surgery  # noqa: E402

    result = run_all(keras3, _surgery, {"keras_module": keras3})
    result["backend"] = keras3.backend.backend()
    print("RESULT " + json.dumps(result))
