"""Weight sparsity: tfmot sparse training to a target (constant, polynomial, 2:4) that
survives strip + .h5, and one-shot unstructured pruning (threshold, per-layer and global
ratio) whose masks survive fine-tuning."""
import numpy as np
import pytest

from surgery._backend import keras
from surgery.pipeline.sparsity import (MaskCallback, prunable_kernels, prune_low_magnitude_model,
                              prune_unstructured, pruning_callbacks, strip, tfmot_prunable,
                              total_sparsity)

layers = keras.layers


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 4))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.Conv2D(16, 1, activation="relu", name="pw")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(8, activation="relu", name="fc")(x)
    outputs = layers.Dense(4, activation="softmax", name="out")(x)
    return keras.Model(inputs, outputs)


def _data(n=96, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 4)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 4, n), 4)
    return x, y


def _fit(model, epochs=2, callbacks=()):
    x, y = _data()
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "categorical_crossentropy")
    model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0,
              callbacks=list(callbacks))
    return model


_TFMOT = ("conv", "pw", "fc", "out")


def test_tfmot_prunable_layers():
    assert tfmot_prunable(layers.Dense(2)) and tfmot_prunable(layers.Conv2D(2, 3))
    assert not tfmot_prunable(layers.DepthwiseConv2D(3))
    assert not tfmot_prunable(layers.ReLU())
    wrapped = prune_low_magnitude_model(_model())
    names = {type(l).__name__ for l in wrapped.layers}
    assert "PruneLowMagnitude" in names and "DepthwiseConv2D" in names


def test_constant_schedule_reaches_target_and_strips_to_h5(tmp_path):
    base = _model()
    before = [w.copy() for w in base.get_weights()]
    x, _ = _data(8)
    wrapped = prune_low_magnitude_model(base, schedule="constant", target_sparsity=0.5,
                                        frequency=2)
    np.testing.assert_allclose(wrapped.predict(x, verbose=0), base.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)
    _fit(wrapped, callbacks=pruning_callbacks())
    for a, b in zip(before, base.get_weights()):  # the input model is untouched
        np.testing.assert_array_equal(a, b)

    stripped = strip(wrapped)
    assert "PruneLowMagnitude" not in {type(l).__name__ for l in stripped.layers}
    path = str(tmp_path / "sparse.h5")
    stripped.save(path)
    loaded = keras.models.load_model(path)  # plain load: no prune_scope, no custom objects
    _, per_layer = total_sparsity(loaded)
    for name in _TFMOT:
        assert per_layer[name] >= 0.49, (name, per_layer[name])
    assert per_layer["dw"] < 0.1  # tfmot never prunes depthwise kernels
    np.testing.assert_allclose(loaded.predict(x, verbose=0), stripped.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)


def test_polynomial_schedule_reaches_target_at_end_step():
    # 96 / 16 = 6 steps per epoch, 2 epochs: steps 0..11. frequency 100 does not divide the
    # span, so it is lowered to a divisor and the last update lands on end_step.
    wrapped = prune_low_magnitude_model(_model(), schedule="polynomial", target_sparsity=0.7,
                                        begin_step=1, end_step=11, frequency=100)
    _fit(wrapped, callbacks=pruning_callbacks())
    stripped = strip(wrapped)
    _, per_layer = total_sparsity(stripped)
    kernels = prunable_kernels(stripped)
    for name in _TFMOT:  # tfmot rounds the number of zeros down
        size = kernels[name].shape.num_elements()
        assert per_layer[name] >= np.floor(0.7 * size) / size, (name, per_layer[name])
    with pytest.raises(ValueError):
        prune_low_magnitude_model(_model(), schedule="polynomial")  # no end_step
    with pytest.raises(ValueError):
        prune_low_magnitude_model(_model(), schedule="cubic")


def _blocks_along_inputs(kernel):
    """tfmot's m:n blocks: runs of consecutive input-channel weights per output position."""
    if kernel.ndim == 2:  # (in, out)
        rows = kernel.T
    else:  # (kh, kw, in, out)
        rows = np.moveaxis(kernel, -1, 0).reshape(-1, kernel.shape[-2])
    return rows.reshape(rows.shape[0], -1, 4)


def test_two_by_four_structure():
    wrapped = prune_low_magnitude_model(_model(), m_by_n=(2, 4))
    _fit(wrapped, epochs=1, callbacks=pruning_callbacks())  # masks are computed at step 1
    stripped = strip(wrapped)
    kernels = prunable_kernels(stripped)
    for name in _TFMOT:
        blocks = _blocks_along_inputs(kernels[name].numpy())
        nonzero = np.count_nonzero(blocks, axis=-1)
        assert nonzero.max() <= 2, name
        assert np.mean(blocks == 0) >= 0.5, name


def test_unstructured_threshold():
    base = _model()
    before = [w.copy() for w in base.get_weights()]
    pruned, masks = prune_unstructured(base, threshold=0.1)
    for a, b in zip(before, base.get_weights()):
        np.testing.assert_array_equal(a, b)
    zeros = count = 0
    for name, var in prunable_kernels(pruned).items():
        original = base.get_layer(name).weights[0].numpy()
        w = var.numpy()
        np.testing.assert_array_equal(w, np.where(np.abs(original) < 0.1, 0.0, original))
        np.testing.assert_array_equal(masks[name], np.abs(original) >= 0.1)
        zeros += np.count_nonzero(w == 0)
        count += w.size
    total, per_layer = total_sparsity(pruned)
    assert total == pytest.approx(zeros / count) and total > 0.1
    assert set(per_layer) == {"conv", "dw", "pw", "fc", "out"}


def test_unstructured_ratio_layer_and_global():
    base = _model()
    pruned, _ = prune_unstructured(base, ratio=0.6, scope="layer")
    total, per_layer = total_sparsity(pruned)
    for name, var in prunable_kernels(pruned).items():
        assert per_layer[name] == pytest.approx(round(0.6 * var.shape.num_elements())
                                                / var.shape.num_elements())
    assert total == pytest.approx(0.6, abs=0.01)

    pruned, masks = prune_unstructured(base, ratio=0.6, scope="global")
    total, per_layer = total_sparsity(pruned)
    assert total == pytest.approx(0.6, abs=1e-3)
    assert max(per_layer.values()) - min(per_layer.values()) > 0.05  # not uniform
    kept = np.concatenate([np.abs(v.numpy()[masks[n]]) for n, v in
                           prunable_kernels(pruned).items()])
    dropped = np.concatenate([np.abs(base.get_layer(n).weights[0].numpy()[~masks[n]])
                              for n in masks])
    assert dropped.max() <= kept.min()


def test_mask_survives_finetuning():
    pruned, masks = prune_unstructured(_model(), ratio=0.5)
    _fit(pruned, epochs=1, callbacks=[MaskCallback(masks)])
    total, _ = total_sparsity(pruned)
    assert total >= 0.5 - 1e-3
    for name, var in prunable_kernels(pruned).items():
        assert not np.any(var.numpy()[~masks[name]])

    unmasked, _ = prune_unstructured(_model(), ratio=0.5)  # without the callback: revived
    _fit(unmasked, epochs=1)
    assert total_sparsity(unmasked)[0] < 0.3  # (dead ReLU units keep a few zeros)


def test_invalid_arguments():
    model = _model()
    with pytest.raises(ValueError):
        prune_unstructured(model)
    with pytest.raises(ValueError):
        prune_unstructured(model, threshold=0.1, ratio=0.5)
    with pytest.raises(ValueError):
        prune_unstructured(model, ratio=1.5)
    with pytest.raises(ValueError):
        prune_unstructured(model, ratio=0.5, scope="tensor")
    with pytest.raises(ValueError):
        prune_low_magnitude_model(model, target_sparsity=1.0)
    with pytest.raises(ValueError):
        prune_low_magnitude_model(model, m_by_n=(4, 2))
    other = keras.Sequential([keras.Input((3,)), layers.Dense(2, name="x")])
    with pytest.raises(ValueError, match="no prunable kernel"):
        other.compile("sgd", "mse")
        other.fit(np.ones((2, 3)), np.ones((2, 2)), verbose=0,
                  callbacks=[MaskCallback({"conv": np.ones((3, 3, 4, 8), bool)})])


def test_pruning_callbacks():
    import importlib.util

    names = [type(c).__name__ for c in pruning_callbacks()]
    assert names == ["UpdatePruningStep"]
    with_logs = [type(c).__name__ for c in pruning_callbacks("/tmp/unused-logs")]
    if importlib.util.find_spec("tensorboard") is None:
        assert with_logs == ["UpdatePruningStep"]  # left out rather than crashing fit()
    else:
        assert with_logs == ["UpdatePruningStep", "PruningSummaries"]
