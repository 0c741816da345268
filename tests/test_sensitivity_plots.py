"""Sensitivity analysis, accuracy vs FLOPs, and the report plots."""
import os

import matplotlib.image
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import surgery
from surgery import keras
from surgery.pipeline.plots import plot_accuracy_vs_flops, plot_channels, plot_sensitivity
from surgery.pipeline.sensitivity import accuracy, accuracy_vs_flops, sensitivity
import data_generator
import models

GROUPS = ["conv1", "conv2", "fc1", "fc2"]  # LeNet-5's prunable groups ("predictions" is not)


@pytest.fixture(autouse=True)
def _fresh_keras_session():  # the module fixture's model must outlive each test
    yield


@pytest.fixture(scope="module")
def trained():
    """LeNet-5 trained for a few epochs on 16x16 digits (about 90% test accuracy)."""
    keras.backend.clear_session()
    splits = data_generator.load_splits("digits", image_size=(16, 16), channels=1,
                                        batch_size=32)
    keras.utils.set_random_seed(0)
    model = models.get_model("lenet5", input_shape=(16, 16, 1), classes=10)
    model.compile(keras.optimizers.Adam(3e-3), "categorical_crossentropy")
    model.fit(splits.train, epochs=3, verbose=0)
    x, y = data_generator.as_arrays(splits.test)
    return model, splits, x, y


@pytest.fixture(scope="module")
def result(trained):
    model, _, x, y = trained
    return sensitivity(model, (x, y), ratios=(0.7, 0.3), progress=False)


def test_sensitivity_baseline_values_and_losses(trained, result):
    model, _, x, y = trained
    direct = float(np.mean(model.predict(x, verbose=0).argmax(-1) == y.argmax(-1)))
    assert direct > 0.7
    assert list(result) == GROUPS
    for name, scores in result.items():
        assert list(scores) == [0.0, 0.3, 0.7]
        assert scores[0.0] == direct == accuracy(model, x, y)
        assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert all(scores[0.7] != direct for scores in result.values())
    assert min(scores[0.7] for scores in result.values()) < direct - 0.1
    assert model.get_layer("conv1").filters == 6  # the input model is untouched


def test_sensitivity_takes_datasets_group_names_and_metrics(trained, result):
    model, splits, x, y = trained
    one = sensitivity(model, splits.test, ratios=(0.7,), groups=["conv2"], progress=False)
    assert one == {"conv2": {0.0: result["conv2"][0.0], 0.7: result["conv2"][0.7]}}
    calls = []

    def count_examples(m, xs, ys):
        calls.append(m.get_layer("fc2").units)
        return float(len(xs))

    custom = sensitivity(model, (x[:40], y[:40]), ratios=(0.5,), groups=["fc2"],
                         metric=count_examples, progress=False)
    assert custom == {"fc2": {0.0: 40.0, 0.5: 40.0}} and calls == [84, 42]
    with pytest.raises(ValueError, match="no channel group"):
        sensitivity(model, (x, y), groups=["pool1"], progress=False)
    with pytest.raises(ValueError, match="reaches a model output"):
        sensitivity(model, (x, y), groups=["predictions"], progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        sensitivity(model, (x, y), ratios=(1.0,), progress=False)


def test_accuracy_vs_flops_shrinks_with_ratio(trained, result):
    model, _, x, y = trained
    rows = accuracy_vs_flops(model, (x, y), ratios=(0.6, 0.0, 0.3), progress=False)
    assert [r["ratio"] for r in rows] == [0.0, 0.3, 0.6]
    assert rows[0]["flops"] == surgery.count_flops(model)
    assert rows[0]["params"] == model.count_params()
    assert rows[0]["accuracy"] == result["conv1"][0.0]
    assert rows[0]["flops"] > rows[1]["flops"] > rows[2]["flops"] > 0
    assert rows[0]["params"] > rows[1]["params"] > rows[2]["params"]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)


def assert_png(path, returned):
    assert returned == str(path) and isinstance(returned.ax, Axes)
    image = matplotlib.image.imread(str(path))
    assert image.ndim == 3 and image.shape[0] >= 200 and image.shape[1] >= 300
    assert image[..., :3].std() > 0.05  # not a blank canvas
    assert [n for n in os.listdir(os.path.dirname(str(path))) if n.endswith(".tmp")] == []


def test_every_plot_writes_a_png(trained, result, tmp_path):
    model, _, x, y = trained
    smaller = surgery.prune(model, ratio=0.5)
    assert_png(tmp_path / "channels.png", plot_channels(model, smaller, str(tmp_path /
                                                                             "channels.png")))
    assert_png(tmp_path / "sens.png", plot_sensitivity(result, str(tmp_path / "sens.png")))
    rows = [dict(ratio=0.0, flops=88080, params=15626, accuracy=0.92),
            dict(ratio=0.5, flops=30416, params=3010, accuracy=0.41)]
    assert_png(tmp_path / "flops.png", plot_accuracy_vs_flops(rows, str(tmp_path / "flops.png")))

    figure = Figure(figsize=(8, 4))
    left, right = figure.subplots(1, 2)
    out = plot_sensitivity(result, str(tmp_path / "mine.png"), ax=right)
    assert out.ax is right and out.figure is figure
    assert_png(tmp_path / "mine.png", out)


def test_sensitivity_png_is_a_heat_map_of_groups_by_ratios(result, tmp_path):
    """One row per group in network order, one column per ratio, the accuracy printed in
    each cell (as a percentage), coloured by the points lost against the unpruned group."""
    out = plot_sensitivity(result, str(tmp_path / "heat.png"))
    assert_png(tmp_path / "heat.png", out)
    ratios = sorted(next(iter(result.values())))
    (image,) = out.ax.get_images()
    drop = np.asarray(image.get_array())
    assert drop.shape == (len(GROUPS), len(ratios))
    assert [t.get_text() for t in out.ax.get_yticklabels()] == list(result) == GROUPS
    assert [t.get_text() for t in out.ax.get_xticklabels()] == [f"{r:g}" for r in ratios]
    assert [t.get_text() for t in out.ax.texts] == [
        f"{100 * result[n][r]:.1f}" for n in GROUPS for r in ratios]
    lost = np.clip([[100 * (result[n][0.0] - result[n][r]) for r in ratios] for n in GROUPS],
                   0, None)
    np.testing.assert_allclose(drop, lost, atol=1e-9)
    worst = max(GROUPS, key=lambda n: result[n][0.0] - min(result[n].values()))
    assert int(np.argmax(drop.max(axis=1))) == GROUPS.index(worst)
    assert drop.max() > 0  # some group loses accuracy: the colours differ
