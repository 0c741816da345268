"""Test helpers: random weights that expose wrong cuts, and the equivalence oracle."""
import numpy as np

import surgery
from surgery.engine.zeroing import max_relative_difference


def randomize_weights(model, seed=0):
    """Give every weight that starts constant a random value, so that BatchNormalization
    statistics, biases and slopes all matter (kernels keep their random initialisation;
    variances stay positive). Moderate scales keep deep models finite in float32."""
    rng = np.random.default_rng(seed)
    values = []
    for w, value in zip(model.weights, model.get_weights()):
        name = w.name.split("/")[-1]
        if "variance" in name or "gamma" in name:
            value = rng.uniform(0.5, 1.5, size=value.shape)
        elif "kernel" not in name or np.all(value == value.flat[0]):
            value = rng.normal(0.0, 0.2, size=value.shape)
        values.append(value.astype(w.dtype.as_numpy_dtype))
    model.set_weights(values)
    return model


def assert_equivalent(model, deletions, x, tol=1e-5, pruned=None):
    """Delete ``deletions`` (layer name -> channels); outputs must equal the zeroed model's."""
    before = [w.copy() for w in model.get_weights()]
    expected = surgery.zero_channels(model, deletions)(x)
    if pruned is None:
        surgeon = surgery.Surgeon(model)
        for name, channels in deletions.items():
            surgeon.add_job("delete_channels", name, channels=channels)
        pruned = surgeon.operate()
    error = max_relative_difference(expected, pruned(x))
    assert error <= tol, f"pruned model differs from the zeroed original by {error:.3g}"
    # the zeroing must matter: otherwise the oracle proves nothing
    assert max_relative_difference(model(x), expected) > 10 * tol
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert pruned.count_params() < model.count_params()
    return pruned
