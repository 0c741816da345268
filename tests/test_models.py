"""The model zoo: every model builds with the documented structure, trains, and round-trips."""
import numpy as np
import pytest

from surgery import keras
from models import MODELS, get_model
from models._common import make_divisible

RNG = np.random.default_rng(0)

# Small but complete configurations: every block and layer kind is present.
TINY = {
    "mobilenet_v2": dict(input_shape=(32, 32, 1), classes=4, alpha=0.35, last_channels=64),
    "mobilenet_v2_res": dict(input_shape=(32, 32, 1), classes=4, alpha=0.35,
                             last_channels=64),
    "mobilenet_v2_vgg": dict(input_shape=(32, 32, 1), classes=4, alpha=0.35,
                             last_channels=64),
    "lenet5": dict(input_shape=(32, 32, 1), classes=10),
    "vgg16": dict(input_shape=(32, 32, 3), classes=10, width=0.125),
    "vgg19": dict(input_shape=(32, 32, 3), classes=10, width=0.125),
    "resnet18": dict(input_shape=(32, 32, 3), classes=10, width=0.125),
}
# Blocks of the standard table with stride 1 and equal in/out widths.
MOBILENET_ADD_BLOCKS = [2, 4, 5, 7, 8, 9, 11, 12, 14, 15]


def layer_types(model):
    return [type(layer).__name__ for layer in model.layers]


def tf_adds(model):
    return [layer for layer in model.layers if type(layer).__name__ == "TFOpLambda"
            and layer.get_config()["function"] == "__operators__.add"]


def batch_for(model, n=4):
    x = RNG.normal(size=(n,) + model.input_shape[1:]).astype("float32")
    classes = model.output_shape[-1]
    y = np.eye(classes, dtype="float32")[np.arange(n) % classes]
    return x, y


def test_registry_is_complete():
    assert set(MODELS) == set(TINY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_builds_trains_and_round_trips(name):
    model = get_model(name, **TINY[name])
    assert isinstance(model, keras.Model) and not isinstance(model, keras.Sequential)
    assert model.input_shape == (None,) + TINY[name]["input_shape"]
    assert model.output_shape == (None, TINY[name]["classes"])
    assert len({layer.name for layer in model.layers}) == len(model.layers)

    x, y = batch_for(model)
    model.compile(keras.optimizers.SGD(0.01), "categorical_crossentropy", run_eagerly=True)
    before = [w.copy() for w in model.get_weights()]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    probs = model(x, training=False).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)

    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]
    np.testing.assert_array_equal(clone(x, training=False).numpy(), probs)


def test_mobilenet_v2_structure():
    model = get_model("mobilenet_v2", **TINY["mobilenet_v2"])
    types = layer_types(model)
    assert types.count("DepthwiseConv2D") == 17
    assert "Add" not in types
    adds = tf_adds(model)
    assert [layer.name for layer in adds] == [f"block_{i}_add" for i in MOBILENET_ADD_BLOCKS]
    relus = [layer for layer in model.layers if isinstance(layer, keras.layers.ReLU)]
    assert relus and all(float(layer.max_value) == 6.0 for layer in relus)
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            reg = layer.depthwise_regularizer
        elif isinstance(layer, keras.layers.Conv2D):
            reg = layer.kernel_regularizer
            assert layer.filters % 8 == 0, layer.name
        else:
            continue
        assert isinstance(reg, keras.regularizers.L1), layer.name
        assert float(reg.l1) == pytest.approx(1e-4)
    # pw·dw·pw: expand -> BN -> ReLU6 -> depthwise -> BN -> ReLU6 -> project -> BN
    chain = ["block_3_expand", "block_3_expand_BN", "block_3_expand_relu",
             "block_3_depthwise", "block_3_depthwise_BN", "block_3_depthwise_relu",
             "block_3_project", "block_3_project_BN"]
    for producer, consumer in zip(chain, chain[1:]):
        inbound = model.get_layer(consumer).inbound_nodes[0].inbound_layers
        assert inbound is model.get_layer(producer) or model.get_layer(producer) in inbound
    assert model.get_layer("block_3_expand").filters == 6 * model.get_layer(
        "block_2_project").filters
    # L1 penalties are part of the loss
    assert len(model.losses) == types.count("Conv2D") + types.count("DepthwiseConv2D")


def test_mobilenet_v2_default_is_the_seed_model():
    model = get_model("mobilenet_v2")
    assert model.input_shape == (None, 100, 100, 1)
    assert model.output_shape == (None, 4)
    assert model.get_layer("Conv1").filters == 32
    assert model.get_layer("block_16_project").filters == 320
    assert model.get_layer("Conv_1").filters == 1280


def test_mobilenet_variants_structure():
    res = get_model("mobilenet_v2_res", **TINY["mobilenet_v2_res"])
    vgg = get_model("mobilenet_v2_vgg", **TINY["mobilenet_v2_vgg"])
    for model in (res, vgg):
        assert "DepthwiseConv2D" not in layer_types(model)
        conv = model.get_layer("block_3_conv")
        assert conv.kernel_size == (3, 3)
        assert conv.filters == 6 * model.get_layer("block_2_project").filters
        assert model.get_layer("block_3_project").kernel_size == (1, 1)
        assert isinstance(conv.kernel_regularizer, keras.regularizers.L1)
    assert [layer.name for layer in tf_adds(res)] == [
        f"block_{i}_add" for i in MOBILENET_ADD_BLOCKS]
    assert tf_adds(vgg) == [] and "Add" not in layer_types(vgg)
    assert res.count_params() == vgg.count_params()


def test_resnet18_structure():
    model = get_model("resnet18", **TINY["resnet18"])
    types = layer_types(model)
    assert types.count("Add") == 8
    assert "TFOpLambda" not in types
    assert types.count("Conv2D") == 1 + 16 + 3  # stem, 8 blocks x 2, 3 projections
    assert model.get_layer("stage4_block2_conv2").filters == 64  # 512 * 0.125


@pytest.mark.parametrize("name,convs", [("vgg16", 13), ("vgg19", 16)])
def test_vgg_structure(name, convs):
    model = get_model(name, **TINY[name])
    types = layer_types(model)
    assert types.count("Conv2D") == convs
    assert types.count("BatchNormalization") == convs + 1
    assert types.count("MaxPooling2D") == 5
    assert model.get_layer("block1_conv1").filters == 8


def test_lenet5_is_the_classic_size():
    model = get_model("lenet5")
    assert model.count_params() == 61706
    assert [layer.units for layer in model.layers
            if isinstance(layer, keras.layers.Dense)] == [120, 84, 10]


def test_weight_decay_adds_l2_penalties():
    model = get_model("resnet18", weight_decay=1e-4, **TINY["resnet18"])
    assert len(model.losses) == layer_types(model).count("Conv2D") + 1
    plain = get_model("resnet18", **TINY["resnet18"])
    assert plain.losses == []


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError, match="unknown model 'mobilenet_v9'.*lenet5.*resnet18"):
        get_model("mobilenet_v9")


@pytest.mark.parametrize("kwargs", [dict(input_shape=(32, 32)), dict(input_shape=(4, 4, 1)),
                                    dict(alpha=0.0)])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="mobilenet_v2"):
        get_model("mobilenet_v2", **kwargs)


def test_make_divisible():
    assert make_divisible(32 * 0.35) == 16
    assert make_divisible(24) == 24
    assert make_divisible(100) == 104
