"""surgery.recalibrate_batchnorm (issue 20, adaptive BN): exact moving statistics, no other
weight touched, on tf-keras (this process) and Keras 3 on TensorFlow, JAX and PyTorch (one
child process each, started together: tests/batchnorm_cases.py), plus its errors.
"""
import json
import os
import sys

import numpy as np
import pytest

import surgery
from surgery import keras

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import batchnorm_cases  # noqa: E402
from keras3_child import finish, start  # noqa: E402

BACKENDS = ("tensorflow", "jax", "torch")


def _check(result):
    for name, (mean_err, var_rel_err) in result["numpy"]["stat_errors"].items():
        assert mean_err < 1e-4 and var_rel_err < 1e-4, (name, mean_err, var_rel_err)
    assert result["numpy"]["stale_error"] > 0.1  # the statistics were wrong before
    assert result["numpy"]["others_unchanged"] and result["numpy"]["n_other_weights"] == 10
    fixed = result["fixed"]
    assert fixed["params"][1] < fixed["params"][0] and fixed["n_bn"] >= 16
    assert fixed["gap_before"] > 0.05, fixed  # stale statistics: inference != training
    assert fixed["gap_after"] < 1e-3, fixed  # float32 through every BN of the model
    assert fixed["others_unchanged"]
    chosen = result["candidates"]  # EagleEye candidates (tests/test_candidates.py: tf-keras)
    assert abs(chosen["flops_removed"] - 0.3) <= 0.02 and len(chosen["scores"]) == 3
    assert chosen["verify"] <= 1e-5 and chosen["moved"] > 1e-3, chosen
    assert chosen["scores"][chosen["chosen"]] == max(chosen["scores"])
    assert abs(chosen["recomputed"] - max(chosen["scores"])) < 1e-6, chosen
    # scored on the zeroed stand-in = scored as real cuts (the way before it), and the same pick
    assert max(chosen["gaps"]) < 1e-4, chosen
    assert chosen["cut_scores"] == chosen["scores"], chosen
    assert int(np.argmax(chosen["cut_scores"])) == chosen["chosen"]
    if chosen["compiles"][0] is not None:  # JAX: the first candidate compiles, no other one
        assert chosen["compiles"][0] >= 2 and chosen["compiles"][1:] == [0, 0], chosen


@pytest.fixture(scope="module")
def keras3_results():
    running = {backend: start(backend, "batchnorm_cases.py") for backend in BACKENDS}
    return running


def test_tf_keras_statistics_are_exact_and_nothing_else_moves():
    _check(batchnorm_cases.run_all(keras, surgery))


@pytest.mark.parametrize("backend", BACKENDS)
def test_keras3_statistics_are_exact_and_nothing_else_moves(keras3_results, backend):
    result = finish(keras3_results[backend])
    assert result["backend"] == backend
    _check(result)


def _small_model():
    x = keras.Input((4, 4, 2))
    h = keras.layers.Conv2D(3, 1, name="conv")(x)
    return keras.Model(x, keras.layers.BatchNormalization(name="bn")(h))


def test_dataset_tuple_and_array_give_the_same_statistics():
    from surgery._backend import tf

    x = np.random.default_rng(0).normal(2.0, 1.5, (50, 4, 4, 2)).astype("float32")
    y = np.zeros((50, 1), "float32")
    stats, model = [], _small_model()
    weights = model.get_weights()
    for data in (x, (x, y), tf.data.Dataset.from_tensor_slices((x, y)).batch(10),
                 tf.data.Dataset.from_tensor_slices(x).batch(10), [x[:10], x[10:20], x[20:30]]):
        model.set_weights(weights)
        surgery.recalibrate_batchnorm(model, data, batches=3, batch_size=10)
        bn = model.get_layer("bn")
        stats.append(np.concatenate([bn.moving_mean.numpy(), bn.moving_variance.numpy()]))
    expected = model.get_layer("conv")(x[:30]).numpy()
    assert np.allclose(stats[0][:3], expected.mean((0, 1, 2)), atol=1e-5)
    assert np.allclose(stats[0][3:], expected.var((0, 1, 2)), rtol=1e-5)
    for s in stats[1:]:
        assert np.allclose(s, stats[0], atol=1e-6)


def test_no_progress_bar_outside_a_terminal(capsys):
    """Standard error that is not a terminal (a log file; here pytest's capture) gets no
    tqdm bar, whose carriage-return updates would fill the log."""
    x = np.random.default_rng(0).normal(size=(20, 4, 4, 2)).astype("float32")
    surgery.recalibrate_batchnorm(_small_model(), x, batches=2, batch_size=10, progress=True)
    assert "recalibrating" not in capsys.readouterr().err


def test_bad_calls_raise_surgery_errors_naming_the_way_out():
    model = _small_model()
    x = np.zeros((4, 4, 4, 2), "float32")
    for bad, words in ((dict(batches=0), "batches"), (dict(batches=2.5), "batches"),
                       (dict(batch_size=0), "batch_size")):
        with pytest.raises(surgery.SurgeryError, match=words):
            surgery.recalibrate_batchnorm(model, x, **bad)
    with pytest.raises(surgery.SurgeryError, match="data"):
        surgery.recalibrate_batchnorm(model, 3.0)
    with pytest.raises(surgery.SurgeryError, match="no batches"):
        surgery.recalibrate_batchnorm(model, x[:0])
    shared_bn = keras.layers.BatchNormalization(name="shared")
    a = keras.Input((4, 4, 2))
    shared = keras.Model(a, keras.layers.Add()([shared_bn(a), shared_bn(a * 2.0)]))
    with pytest.raises(surgery.SurgeryError, match="shared.*2 times"):
        surgery.recalibrate_batchnorm(shared, x)
    outer_in = keras.Input((4, 4, 2))
    nested = keras.Model(outer_in, _small_model()(outer_in))
    with pytest.raises(surgery.SurgeryError, match="flatten_model"):
        surgery.recalibrate_batchnorm(nested, x)
    with pytest.raises(surgery.SurgeryError, match="keras.Model"):
        surgery.recalibrate_batchnorm(object(), x)


@pytest.fixture(scope="module")
def bn_model_file(tmp_path_factory):
    """An untrained two-group conv-BN-ReLU net (16x16x1, 10 classes) as .h5."""
    x = inputs = keras.Input((16, 16, 1))
    for i in range(2):
        x = keras.layers.Conv2D(8, 3, padding="same", name=f"conv{i}")(x)
        x = keras.layers.ReLU()(keras.layers.BatchNormalization(name=f"bn{i}")(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    path = str(tmp_path_factory.mktemp("bn_model") / "model.h5")
    keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x)).save(
        path, save_format="h5")
    return path


@pytest.mark.parametrize("mode", ["iterative", "layerwise", "off"])
def test_the_pipeline_recalibrates_after_every_cut(bn_model_file, tmp_path, caplog, mode):
    import logging

    import prune_and_finetune as pf

    out = tmp_path / "run"
    argv = ["--model-path", bn_model_file, "--ratio", "0.3", "--finetune-epochs", "2",
            "--batch-size", "64", "--quiet", "--no-plots", "--out", str(out),
            "--recalibrate-batches", "0" if mode == "off" else "2"]
    argv += {"iterative": ["--iterative", "2"], "layerwise": ["--layerwise",
                                                              "--layerwise-steps", "1"],
             "off": []}[mode]
    caplog.set_level(logging.INFO, logger="surgery.calibration.batchnorm")
    pf.run(pf.build_parser().parse_args(argv))
    calls = [r for r in caplog.records if "re-estimated on 128 examples" in r.getMessage()]
    report = json.loads((out / "report.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    cuts = len(plan["rounds"]) if "rounds" in plan else 1
    md = (out / "report.md").read_text()
    if mode == "off":
        assert not calls and report["acc_recalibrated"] is None
        assert report["acc_pruned"] == report["acc_pruned_raw"]
        assert "| after surgery |" in md and "recalibration" not in md
        return
    assert cuts == 2 and len(calls) == cuts, (cuts, [r.getMessage() for r in calls])
    # after every cut: both rounds, or both groups
    assert report["recalibrate_batches"] == 2
    assert report["acc_pruned"] == report["acc_recalibrated"]
    assert "after surgery + BN recalibration (2 batches)" in md
    if mode == "iterative":
        assert 0 <= report["acc_pruned_raw"] <= 1
        assert "after surgery (stale BN statistics)" in md
    else:  # layerwise: measured once, after all groups were cut and recalibrated
        assert report["acc_pruned_raw"] is None
