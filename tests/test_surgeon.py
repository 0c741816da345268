"""surgery.Surgeon: clear errors, nothing half-done, Sequential and nested models, .h5."""
import subprocess
import sys

import numpy as np
import pytest

import surgery
from surgery import keras, tf
from equivalence import assert_equivalent, randomize_weights
from surgery.engine.zeroing import max_relative_difference

L = keras.layers
X = np.random.default_rng(0).normal(size=(3, 16, 16, 3)).astype("float32")


def small_model():
    inp = L.Input((16, 16, 3))
    x = L.Conv2D(8, 3, name="c1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(6.0)(x)
    x = L.DepthwiseConv2D(3, name="dw")(x)
    x = L.Conv2D(6, 1, name="c2")(x)
    x = L.GlobalAveragePooling2D()(x)
    return randomize_weights(keras.Model(inp, L.Dense(4, name="head")(x), name="small"))


def test_input_model_is_never_modified():
    model = small_model()
    weights = [w.copy() for w in model.get_weights()]
    nodes = {l.name: len(l.inbound_nodes) for l in model.layers}
    before = model(X).numpy()
    pruned = surgery.delete_channels(model, "c1", [0, 1])
    assert {l.name: len(l.inbound_nodes) for l in model.layers} == nodes
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
    assert not set(map(id, pruned.layers)) & set(map(id, model.layers))
    assert not {id(w) for w in pruned.weights} & {id(w) for w in model.weights}
    np.testing.assert_array_equal(model(X).numpy(), before)


def test_pruned_model_saves_to_h5_and_loads_back(tmp_path):
    model = small_model()
    pruned = assert_equivalent(model, {"c1": [2, 5], "c2": [0]}, X)
    path = tmp_path / "pruned.h5"
    pruned.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(X, verbose=0), pruned.predict(X, verbose=0))
    assert loaded.get_layer("dw").get_weights()[0].shape[2] == 6


def test_out_of_range_and_all_channels_are_refused():
    model = small_model()
    surgeon = surgery.Surgeon(model)
    with pytest.raises(surgery.SurgeryError, match=r"\[8, 9\] are out of range.*'c1'.*8 channels"):
        surgeon.add_job("delete_channels", "c1", channels=[0, 8, 9])
    with pytest.raises(surgery.SurgeryError, match="all 8 channels of layer 'c1'"):
        surgeon.add_job("delete_channels", "c1", channels=range(8))
    with pytest.raises(surgery.SurgeryError, match="no layer named 'nope'"):
        surgeon.add_job("delete_channels", "nope", channels=[0])
    with pytest.raises(surgery.UnsupportedLayerError, match="'dw' \\(DepthwiseConv2D\\)"):
        surgeon.add_job("delete_channels", "dw", channels=[0])


def test_unsupported_layer_names_layer_class_and_the_way_out():
    class Wobble(L.Layer):
        def call(self, x):
            return x * 2.0
    inp = L.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="c1")(inp)
    x = Wobble(name="wobble")(x)
    model = keras.Model(inp, L.Conv2D(2, 1)(x))
    with pytest.raises(surgery.UnsupportedLayerError) as info:
        surgery.delete_channels(model, "c1", [0])
    message = str(info.value)
    assert "'wobble' (Wobble)" in message and "register_rule" in message
    assert "ignore=" in message


def test_register_handler_for_a_user_layer():
    class ChannelScale(L.Layer):
        def build(self, shape):
            self.scale = self.add_weight(name="scale", shape=(shape[-1],))

        def call(self, x):
            return x * self.scale

    @surgery.register_handler(ChannelScale)
    def channel_scale(layer, mask):
        keep = surgery.engine.handlers.channel_vector(mask)
        return surgery.engine.handlers.rebuilt(layer, [layer.get_weights()[0][keep]]), mask

    inp = L.Input((16, 16, 3))
    x = L.Conv2D(6, 3, name="producer")(inp)
    x = ChannelScale(name="scale")(x)
    model = randomize_weights(keras.Model(inp, L.Conv2D(2, 1)(x)))
    pruned = assert_equivalent(model, {"producer": [1, 4]}, X)
    assert pruned.get_layer("scale").get_weights()[0].shape == (4,)


def test_subclassed_model_is_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = L.Conv2D(4, 3)

        def call(self, x):
            return self.conv(x)
    net = Net()
    net(X)
    with pytest.raises(surgery.SurgeryError, match="subclassed.*functional API"):
        surgery.Surgeon(net)


def test_sequential_model():
    model = keras.Sequential([L.Input((16, 16, 3)), L.Conv2D(6, 3, name="c1"),
                              L.BatchNormalization(), L.ReLU(), L.Flatten(),
                              L.Dense(5, name="fc"), L.Dense(2)])
    randomize_weights(model)
    assert_equivalent(model, {"c1": [0, 3], "fc": [4]}, X)


def test_nested_model_refused_clearly_then_flattened():
    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35,
                                              include_top=False, weights=None)
    model = keras.Sequential([L.Input((32, 32, 3)), backbone,
                              L.GlobalAveragePooling2D(), L.Dense(4)])
    randomize_weights(model)
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype("float32")
    with pytest.raises(surgery.SurgeryError, match="nested model.*flatten_model"):
        surgery.delete_channels(model, backbone.get_layer("block_1_expand"), [0])
    flat = surgery.flatten_model(model)
    assert max_relative_difference(model(x), flat(x)) < 1e-6
    assert_equivalent(flat, {"block_2_expand": list(range(0, 48, 3)),
                             "Conv_1": list(range(0, 1280, 7))}, x)


def test_jobs_other_than_delete_channels_still_work():
    model = small_model()
    surgeon = surgery.Surgeon(model)
    surgeon.add_job("delete_channels", "c1", channels=[0])
    surgeon.add_job("insert_layer", "c2", new_layer=L.Dropout(0.5, name="drop"))
    smaller = surgeon.operate()
    assert "drop" in [l.name for l in smaller.layers]
    assert max_relative_difference(surgery.zero_channels(model, {"c1": [0]})(X),
                                   smaller(X)) < 1e-5


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_import_selects_keras2_when_tensorflow_is_not_imported_yet():
    out = run_python("import os; os.environ.pop('TF_USE_LEGACY_KERAS', None); "
                     "import surgery, tensorflow as tf; print(tf.keras.layers.Dense.__module__)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("tf_keras")


def test_import_after_keras3_tensorflow_keeps_keras3_and_refuses_surgeon_clearly():
    out = run_python(
        "import os; os.environ.pop('TF_USE_LEGACY_KERAS', None); "
        "import tensorflow as tf; import surgery; import keras; "
        "assert tf.keras.Model is keras.Model, 'surgery changed what tf.keras is'; "
        "assert 'TF_USE_LEGACY_KERAS' not in os.environ\n"
        "try:\n    surgery.Surgeon\nexcept surgery.SurgeryError as err:\n    print(err)")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "TF_USE_LEGACY_KERAS=1" in out.stdout and "Import `surgery` first" in out.stdout
