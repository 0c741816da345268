"""Equivalence for every built-in handler: zero the channels, delete them, compare."""
import numpy as np
import pytest

import surgery
from surgery import keras, tf
from equivalence import assert_equivalent, randomize_weights

L = keras.layers
RNG = np.random.default_rng(1)


def x_for(model, n=3):
    return RNG.normal(size=(n,) + tuple(model.input_shape[1:])).astype("float32")


def build(body, shape=(12, 12, 4)):
    inp = L.Input(shape)
    return randomize_weights(keras.Model(inp, body(inp)))


def head(x, units=3):
    return L.Dense(units, name="head")(L.GlobalAveragePooling2D()(x))


@pytest.mark.parametrize("multiplier,use_bias", [(1, True), (2, True), (3, False)])
def test_depthwise_conv(multiplier, use_bias):
    def body(i):
        x = L.Conv2D(6, 1, name="producer")(i)
        x = L.DepthwiseConv2D(3, depth_multiplier=multiplier, use_bias=use_bias,
                              strides=2, padding="same", name="dw")(x)
        return head(L.Conv2D(5, 1, name="consumer")(x))
    model = build(body)
    pruned = assert_equivalent(model, {"producer": [1, 4]}, x_for(model))
    dw = pruned.get_layer("dw")
    assert dw.get_weights()[0].shape == (3, 3, 4, multiplier)
    assert pruned.get_layer("consumer").get_weights()[0].shape[2] == 4 * multiplier


def test_separable_conv_as_consumer_and_producer():
    def body(i):
        x = L.Conv2D(6, 1, name="producer")(i)
        x = L.SeparableConv2D(7, 3, depth_multiplier=2, padding="same", name="sep")(x)
        x = L.ReLU()(x)
        return head(L.Conv2D(4, 1, name="consumer")(x))
    model = build(body)
    pruned = assert_equivalent(model, {"producer": [0, 5], "sep": [2, 3, 6]}, x_for(model))
    depthwise, pointwise, bias = pruned.get_layer("sep").get_weights()
    assert depthwise.shape[2:] == (4, 2) and pointwise.shape[2:] == (8, 4) and bias.shape == (4,)


def test_conv2d_transpose_as_consumer_and_producer():
    def body(i):
        x = L.Conv2D(6, 1, name="producer")(i)
        x = L.Conv2DTranspose(5, 3, strides=2, padding="same", name="up")(x)
        x = L.BatchNormalization()(x)
        return head(L.Conv2D(4, 1, name="consumer")(x))
    model = build(body)
    pruned = assert_equivalent(model, {"producer": [2], "up": [0, 4]}, x_for(model))
    assert pruned.get_layer("up").get_weights()[0].shape == (3, 3, 3, 5)


@pytest.mark.parametrize("activation", [
    lambda: L.ReLU(6.0), lambda: L.LeakyReLU(0.2), lambda: L.ELU(), lambda: L.PReLU(),
    lambda: L.PReLU(shared_axes=[1, 2]), lambda: L.Activation("swish"),
    lambda: L.Activation("tanh")])
def test_activations(activation):
    def body(i):
        x = L.Conv2D(6, 3, padding="same", name="producer")(i)
        x = activation()(x)
        return head(L.Conv2D(4, 1, name="consumer")(x))
    model = build(body)
    assert_equivalent(model, {"producer": [0, 2, 3]}, x_for(model))


def test_cropping_and_pooling():
    def body(i):
        x = L.Conv2D(6, 3, padding="same", name="producer")(i)
        x = L.Cropping2D(((1, 2), (0, 3)))(x)
        x = L.MaxPooling2D()(x)
        return head(L.Conv2D(4, 1, name="consumer")(x))
    model = build(body)
    assert_equivalent(model, {"producer": [1, 5]}, x_for(model))


def test_rescaling_and_normalization_at_the_input():
    inp = L.Input((10, 10, 3))
    x = L.Rescaling(1 / 127.5, offset=-1)(inp)
    x = L.Normalization(mean=[0.1, 0.2, 0.3], variance=[1.0, 2.0, 0.5])(x)
    x = L.Conv2D(6, 3, name="producer")(x)
    model = randomize_weights(keras.Model(inp, head(L.Conv2D(4, 1)(L.ELU()(x)))))
    x = np.random.default_rng(7).uniform(0, 255, size=(3, 10, 10, 3)).astype("float32")
    assert_equivalent(model, {"producer": [1, 3]}, x)


def test_squeeze_excite_reshape_and_multiply_gate():
    def body(i):
        x = L.Conv2D(8, 3, padding="same", name="feature")(i)
        x = L.BatchNormalization()(x)
        s = L.GlobalAveragePooling2D()(x)
        s = L.Reshape((1, 1, 8))(s)
        s = L.Conv2D(3, 1, activation="relu", name="squeeze")(s)
        s = L.Conv2D(8, 1, activation="sigmoid", name="excite")(s)
        x = L.Multiply()([x, s])
        return head(L.Conv2D(4, 1, name="consumer")(x))
    model = build(body)
    channels = [0, 6, 7]
    assert_equivalent(model, {"feature": channels, "excite": channels}, x_for(model))


@pytest.mark.parametrize("merge", [L.Add, L.Subtract, L.Average, L.Maximum, L.Minimum])
def test_merge_layers(merge):
    def body(i):
        a = L.Conv2D(6, 1, name="a")(i)
        b = L.Conv2D(6, 1, name="b")(i)
        return head(L.Conv2D(4, 1, name="consumer")(merge()([a, b])))
    model = build(body)
    assert_equivalent(model, {"a": [2, 3], "b": [2, 3]}, x_for(model))


def test_merge_with_different_deletions_is_a_clear_error():
    def body(i):
        a = L.Conv2D(6, 1, name="a")(i)
        b = L.Conv2D(6, 1, name="b")(i)
        return head(L.Add(name="join")([a, b]))
    model = build(body)
    surgeon = surgery.Surgeon(model)
    surgeon.add_job("delete_channels", "a", channels=[0])
    with pytest.raises(surgery.SurgeryError, match="'join' \\(Add\\).*different"):
        surgeon.operate()


def test_tf_op_lambda_shortcut_and_scalar_ops():
    def body(i):
        a = L.Conv2D(6, 1, name="a")(i)
        b = L.Conv2D(6, 1, name="b")(i)
        x = a + b                              # tf.__operators__.add
        x = x * tf.nn.relu6(x + 3.0) * (1 / 6)  # hard-swish as in MobileNetV3
        return head(L.Conv2D(4, 1, name="consumer")(x))
    model = build(body)
    assert any(type(l).__name__ == "TFOpLambda" for l in model.layers)
    assert_equivalent(model, {"a": [0, 5], "b": [0, 5]}, x_for(model))


def test_concatenate_offsets():
    def body(i):
        a = L.Conv2D(5, 1, name="a")(i)
        b = L.Conv2D(7, 1, name="b")(i)
        x = L.Concatenate()([a, L.BatchNormalization()(b)])
        return head(L.Conv2D(4, 1, name="consumer")(x))
    model = build(body)
    pruned = assert_equivalent(model, {"a": [4], "b": [0, 6]}, x_for(model))
    assert pruned.get_layer("consumer").get_weights()[0].shape[2] == 9


def test_grouped_conv_consumer():
    def body(i):
        x = L.Conv2D(8, 1, name="producer")(i)
        x = L.Conv2D(6, 3, groups=2, name="grouped")(x)
        return head(x)
    model = build(body)
    # one channel from each group of 4 inputs
    pruned = assert_equivalent(model, {"producer": [1, 6]}, x_for(model))
    assert pruned.get_layer("grouped").get_weights()[0].shape == (3, 3, 3, 6)


def test_flatten_into_dense_and_dense_units():
    def body(i):
        x = L.Conv2D(4, 3, strides=3, name="producer")(i)
        x = L.Flatten()(x)
        x = L.Dense(10, activation="relu", name="fc")(x)
        return L.Dense(3)(x)
    model = build(body)
    assert_equivalent(model, {"producer": [1], "fc": [0, 9]}, x_for(model))


def test_mobilenet_v2_expansion_flows_through_depthwise_bn_relu6_into_projection():
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35,
                                           weights=None, classes=5,
                                           classifier_activation=None)
    # up to the block's residual add: deeper, random-weight ReLU6 layers saturate and
    # would hide any difference the oracle should see
    model = keras.Model(model.inputs, model.get_layer("block_2_add").output)
    randomize_weights(model, seed=3)
    expand = model.get_layer("block_2_expand")
    channels = list(range(0, expand.filters, 3))
    pruned = assert_equivalent(model, {"block_2_expand": channels},
                               x_for(model, 2), tol=1e-5)
    keep = expand.filters - len(channels)
    assert pruned.get_layer("block_2_depthwise").get_weights()[0].shape[2] == keep
    assert pruned.get_layer("block_2_expand_BN").get_weights()[0].shape == (keep,)
    assert pruned.get_layer("block_2_project").get_weights()[0].shape[2] == keep


def test_float64_model_equivalence_to_1e_8():
    keras.backend.set_floatx("float64")
    try:
        inp = L.Input((8, 8, 3), dtype="float64")
        x = L.Conv2D(6, 3, name="producer")(inp)
        x = L.BatchNormalization()(x)
        x = L.DepthwiseConv2D(3, padding="same")(L.ReLU(6.0)(x))
        model = randomize_weights(keras.Model(inp, head(L.Conv2D(3, 1)(x))))
        x = RNG.normal(size=(2, 8, 8, 3))
        assert_equivalent(model, {"producer": [0, 4]}, x, tol=1e-8)
    finally:
        keras.backend.set_floatx("float32")
