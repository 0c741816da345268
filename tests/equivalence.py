"""Test helpers: random weights that expose wrong cuts, and the equivalence oracle."""
import numpy as np

import surgery
from surgery.zeroing import max_relative_difference


def randomize_weights(model, seed=0):
    """Give every weight a random value (variances positive) so BN and biases matter."""
    rng = np.random.default_rng(seed)
    values = []
    for w in model.weights:
        shape = tuple(w.shape)
        if "variance" in w.name:
            values.append(rng.uniform(0.5, 2.0, size=shape))
        else:
            values.append(rng.normal(0.0, 0.5, size=shape))
    model.set_weights([v.astype(w.dtype.as_numpy_dtype) for v, w in zip(values, model.weights)])
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
