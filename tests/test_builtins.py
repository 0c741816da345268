"""Keras's own parts instead of copies (issue 21 item 2): the warmup + cosine schedule is
Keras's ``CosineDecay`` in both generations, Keras 3 distils with ``keras.distillation``,
and files saved by the earlier code under the old names still load.

The files in tests/data were saved by the code before this change (tests/data/
make_legacy_files.py says how), with the old ``surgery>WarmupCosine`` and
``train>WarmupSchedule`` schedules and the registered penalties; legacy_schedules.json
holds the old schedules' rates. The new rates equal the old ones from the end of warmup on
and are lower by at most ``peak / warmup_steps`` during warmup (Keras's warmup starts at 0).
Keras 3 runs in child processes (tests/keras3_builtins_cases.py), one per backend.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import surgery  # noqa: F401  (tf-keras in this process)
from surgery import keras
from surgery.pipeline import finetune, regularizers  # noqa: F401  (register the names)
from surgery.pipeline.distillation import distillation_loss
from surgery.pipeline.schedules import WarmupSchedule, warmup_cosine

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(HERE, "data")
RECORD = json.load(open(os.path.join(DATA, "legacy_schedules.json")))


def _check_rates(rates, old, config):
    peak = config.get("peak_lr", config.get("init_lr"))
    warm = config["warmup_steps"]
    for step, new, was in zip(RECORD["steps"], rates, old):
        if step < warm:
            assert 0.0 <= was - new <= peak / warm * (1 + 1e-5), (step, new, was)
        else:
            assert new == pytest.approx(was, rel=1e-5, abs=1e-9), (step, new, was)
    assert rates != pytest.approx(old)  # the warmup difference is there: the check can fail


@pytest.mark.parametrize("name", ["finetune", "train"])
def test_keras2_files_saved_under_the_old_names_load(name):
    model = keras.models.load_model(os.path.join(DATA, f"legacy_keras2_{name}.h5"))
    schedule = model.optimizer._learning_rate
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay), type(schedule)
    record = RECORD[f"keras2_{name}"]
    _check_rates([float(schedule(s)) for s in RECORD["steps"]], record["rates"],
                 record["config"])
    reg = model.get_layer("fc").kernel_regularizer
    assert [type(r).__name__ for r in reg.regularizers] == [
        "GroupLasso", "L1", "AngularDissimilarity"]
    kernel = model.get_layer("fc").kernel
    expected = sum(float(r(kernel)) for r in reg.regularizers)
    assert float(model.losses[0]) == pytest.approx(expected, rel=1e-6) and expected > 0


def test_schedules_are_keras_cosine_decay_and_step_keeps_its_class():
    s = warmup_cosine(1e-2, total_steps=100, warmup_steps=10, final_fraction=0.1)
    assert type(s) is keras.optimizers.schedules.CosineDecay
    assert [round(float(s(i)), 7) for i in (0, 5, 10, 100, 500)] == [
        0.0, 0.005, 0.01, 0.001, 0.001]
    assert type(WarmupSchedule.make(0.1, 100, 10, "cosine")) is type(s)
    step = WarmupSchedule.make(1.0, 100, 10, "step", step_size=30)
    assert isinstance(step, WarmupSchedule)
    assert [round(float(step(i)), 6) for i in (0, 9, 10, 39, 40, 70)] == [
        0.1, 1.0, 1.0, 1.0, 0.1, 0.01]
    with pytest.raises(ValueError, match="cosine"):
        WarmupSchedule(1.0, 100, 10, "cosine")


def test_keras2_distillation_loss_matches_numpy():
    rng = np.random.default_rng(0)
    y = np.eye(5, dtype="float32")[rng.integers(0, 5, 16)]
    ps = rng.dirichlet(np.ones(5), 16).astype("float32")
    lt = rng.normal(size=(16, 5)).astype("float32")
    t, alpha = 3.0, 0.3
    got = float(distillation_loss(y, ps, lt, temperature=t, alpha=alpha,
                                  student_softmax=True, teacher_softmax=False))

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    qt, qs = softmax(lt / t), softmax(np.log(ps) / t)
    kl = np.sum(qt * np.log(qt / qs), -1).mean() * t * t
    ce = -np.sum(y * np.log(ps), -1).mean()
    assert got == pytest.approx(alpha * kl + (1 - alpha) * ce, rel=1e-5)


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_keras3_distiller_and_old_files(backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    env.pop("TF_USE_LEGACY_KERAS", None)
    proc = subprocess.run([sys.executable, os.path.join(HERE, "keras3_builtins_cases.py")],
                          env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"] == backend
    for name in ("finetune", "train"):
        got = result["legacy"][name]
        assert got["class"] == "CosineDecay"
        assert got["penalties"] == ["CombinedRegularizer", "GroupLasso", "L1",
                                    "AngularDissimilarity"]
        record = RECORD[f"keras3_{name}"]
        _check_rates(got["rates"], record["rates"], record["config"])
    loss = result["loss"]
    assert loss["ours"] == pytest.approx(loss["numpy"], rel=1e-5)
    assert loss["plain"] != pytest.approx(loss["numpy"], rel=1e-2)  # Keras alone differs
    fit = result["fit"]
    assert all(np.isfinite(fit)) and fit[-1] < fit[0]
