"""Keras 3 child process for tests/test_builtins.py (KERAS_BACKEND is read once per process).

``python tests/keras3_builtins_cases.py`` (KERAS_BACKEND=tensorflow|jax|torch) prints one
JSON line:

- ``legacy``: for each ``.keras`` file in tests/data saved under the old schedule names,
  the class of its loaded schedule, its rates at the recorded steps, and the penalties'
  classes;
- ``loss``: the loss of :func:`surgery.pipeline.distillation.make_distiller` on a small
  softmax model with an L1 kernel regulariser, next to the same sum computed in NumPy (the
  oracle), and next to the loss of plain ``keras.distillation.Distiller`` +
  ``LogitsDistillation`` (which differs: it takes the probabilities for logits and leaves
  out the regulariser, the two things the subclasses correct);
- ``fit``: the distiller's losses over three epochs of ``fit``.
"""
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.pop("TF_USE_LEGACY_KERAS", None)  # a Keras 3 process

import numpy as np  # noqa: E402
import keras  # noqa: E402  (Keras 3 first)

import surgery  # noqa: E402,F401
from surgery.pipeline import regularizers3  # noqa: E402,F401  (registers the penalties)
from surgery.pipeline import schedules  # noqa: E402,F401  (registers the old schedule names)
from surgery.pipeline.distillation import compile_distiller, make_distiller  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
T, ALPHA, L1 = 3.0, 0.3, 1e-2


def legacy():
    record = json.load(open(os.path.join(HERE, "data", "legacy_schedules.json")))
    out = {}
    for name in ("finetune", "train"):
        model = keras.models.load_model(os.path.join(HERE, "data", f"legacy_keras3_{name}.keras"))
        schedule = model.optimizer._learning_rate
        reg = model.get_layer("fc").kernel_regularizer
        out[name] = {"class": type(schedule).__name__,
                     "rates": [float(schedule(s)) for s in record["steps"]],
                     "penalties": [type(reg).__name__] + [type(r).__name__
                                                          for r in reg.regularizers]}
    return out


def net(seed, units):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6,))
    h = keras.layers.Dense(units, activation="relu",
                           kernel_regularizer=keras.regularizers.L1(L1))(inp)
    return keras.Model(inp, keras.layers.Dense(4, activation="softmax")(h))


def numpy_loss(y, ps, pt, reg):
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    ls, lt = np.log(np.clip(ps, 1e-7, 1)), np.log(np.clip(pt, 1e-7, 1))
    qt, qs = np.exp(log_softmax(lt / T)), np.exp(log_softmax(ls / T))
    kl = np.sum(qt * (np.log(qt) - np.log(qs)), -1).mean() * T * T
    ce = -np.sum(y * np.log(np.clip(ps, 1e-7, 1)), -1).mean()
    return ALPHA * kl + (1 - ALPHA) * ce + reg


def losses():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = np.eye(4, dtype="float32")[rng.integers(0, 4, 64)]
    student, teacher = net(1, 8), net(2, 16)
    ps, pt = (keras.ops.convert_to_numpy(m(x)) for m in (student, teacher))
    reg = L1 * float(np.abs(keras.ops.convert_to_numpy(student.layers[1].kernel)).sum())
    ours = make_distiller(student, teacher, temperature=T, alpha=ALPHA)
    compile_distiller(ours, "adam")
    plain = keras.distillation.Distiller(
        teacher=teacher, student=student, student_loss_weight=1 - ALPHA,
        distillation_losses=keras.distillation.LogitsDistillation(
            temperature=T, loss=keras.losses.KLDivergence()))
    plain.compile(optimizer="adam", loss="categorical_crossentropy")
    value = {name: float(keras.ops.convert_to_numpy(
        d.compute_loss(x=x, y=y, y_pred=student(x), training=False)))
        for name, d in (("ours", ours), ("plain", plain))}
    value["numpy"] = float(numpy_loss(y, ps, pt, reg))
    value["regulariser"] = reg
    history = ours.fit(x, y, epochs=3, batch_size=16, verbose=0)
    return value, [float(v) for v in history.history["loss"]]


if __name__ == "__main__":
    loss, fit = losses()
    print(json.dumps({"backend": keras.backend.backend(), "legacy": legacy(), "loss": loss,
                      "fit": fit}))
