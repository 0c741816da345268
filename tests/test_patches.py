"""Each patch fixes a real failure of stock kerassurgeon 0.2.0 on tf-keras 2.21.

Every test runs the same stock kerassurgeon call twice: with all patches but the one under
test (it must fail the way upstream fails) and with all patches (it must work, and for
channel deletion give outputs equal to the zeroed original).
"""
import contextlib
import io

import numpy as np
import pytest

import patches
import surgery
from surgery import keras
from equivalence import randomize_weights
from surgery.engine.zeroing import max_relative_difference

from kerassurgeon import operations, utils

L = keras.layers


@contextlib.contextmanager
def without(patch_name):
    """All patches applied except ``patch_name``."""
    patches.revert_all()
    for patch in patches.all_patches():
        if patch.name != patch_name:
            patch.apply()
    try:
        yield
    finally:
        patches.revert_all()
        patches.apply_all()


def quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):  # stock prints per deletion
        return fn(*args, **kwargs)


def conv_relu_model():
    inp = L.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="c1")(inp)
    x = L.ReLU(name="relu")(x)
    return randomize_weights(keras.Model(inp, L.Conv2D(2, 1, name="c2")(x)))


X = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")


def test_patches_are_idempotent_and_named():
    first = patches.apply_all()
    again = patches.apply_all()
    assert [p.name for p in first] == [p.name for p in again]
    assert all(p.applied and p.doc for p in first)
    assert getattr(utils.single_element, "__patch__") == "utils.single_element"


def test_single_element_patch():
    model = conv_relu_model()
    with without("utils.single_element"):
        with pytest.raises(TypeError, match="__len__"):
            quiet(operations.delete_channels, model, model.get_layer("c1"), [0])
    pruned = quiet(operations.delete_channels, model, model.get_layer("c1"), [1])
    zeroed = surgery.zero_channels(model, {"c1": [1]})
    assert max_relative_difference(zeroed(X), pruned(X)) < 1e-5


def test_get_one_tensor_and_insert_layer_patches():
    model = conv_relu_model()
    for name in ("utils.get_one_tensor", "Surgeon._insert_layer"):
        with without(name):
            with pytest.raises(TypeError, match="__len__"):
                operations.insert_layer(model, model.get_layer("c2"), L.Dropout(0.5))
    new = operations.insert_layer(model, model.get_layer("c2"), L.Dropout(0.5))
    assert [type(l).__name__ for l in new.layers][2:4] == ["ReLU", "Dropout"]
    np.testing.assert_allclose(new(X), model(X), rtol=1e-6)


def test_delete_layer_patch():
    inp = L.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="c1")(inp)
    x = L.Dropout(0.5, name="drop")(x)
    model = keras.Model(inp, L.Conv2D(2, 1)(x))
    with without("Surgeon._delete_layer"):
        with pytest.raises(TypeError, match="__len__"):
            operations.delete_layer(model, model.get_layer("drop"))
    new = operations.delete_layer(model, model.get_layer("drop"))
    assert "drop" not in [l.name for l in new.layers]
    np.testing.assert_allclose(new(X), model(X), rtol=1e-6)


def test_relu_patch():
    model = conv_relu_model()
    with without("Surgeon._apply_delete_mask:ReLU"):
        with pytest.raises(ValueError, match='"ReLU" layers are currently unsupported'):
            quiet(operations.delete_channels, model, model.get_layer("c1"), [0])
    pruned = quiet(operations.delete_channels, model, model.get_layer("c1"), [0, 2])
    zeroed = surgery.zero_channels(model, {"c1": [0, 2]})
    assert max_relative_difference(zeroed(X), pruned(X)) < 1e-5


def test_merge_patch_raises_the_intended_error():
    inp = L.Input((8, 8, 3))
    a = L.Conv2D(4, 1, name="a")(inp)
    b = L.Conv2D(4, 1, name="b")(inp)
    model = keras.Model(inp, L.Conv2D(2, 1)(L.Add(name="join")([a, b])))
    with without("Surgeon._apply_delete_mask:merge"):
        with pytest.raises(Exception) as info:  # an opaque shape error deep in Keras
            quiet(operations.delete_channels, model, model.get_layer("a"), [0])
        assert "same channels deleted" not in str(info.value)
    with pytest.raises(ValueError, match="'join' must have the same channels deleted"):
        quiet(operations.delete_channels, model, model.get_layer("a"), [0])


def test_concatenate_patch_after_the_layer_is_used_in_two_models():
    inp = L.Input((8, 8, 3))
    a = L.Conv2D(4, 1, name="a")(inp)
    b = L.Conv2D(3, 1, name="b")(inp)
    model = randomize_weights(keras.Model(inp, L.Conv2D(2, 1)(L.Concatenate()([a, b]))))
    quiet(operations.delete_channels, model, model.get_layer("b"), [0])  # 2nd use of layers
    with without("Surgeon._apply_delete_mask:Concatenate"):
        with pytest.raises(Exception, match="multiple inbound nodes|not connected"):
            quiet(operations.delete_channels, model, model.get_layer("a"), [1])
    pruned = quiet(operations.delete_channels, model, model.get_layer("a"), [1])
    zeroed = surgery.zero_channels(model, {"a": [1]})
    assert max_relative_difference(zeroed(X), pruned(X)) < 1e-5


def test_other_kerassurgeon_versions_are_refused(monkeypatch):
    monkeypatch.setattr(patches, "installed_version", lambda: "0.1.3")
    with pytest.raises(ImportError, match="0.1.3.*--no-deps kerassurgeon==0.2.0"):
        patches.check_version()


def test_import_does_not_configure_the_root_logger():
    import subprocess
    import sys
    code = "import logging, surgery; print(len(logging.getLogger().handlers))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "0"
