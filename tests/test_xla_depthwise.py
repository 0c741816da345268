"""The depthwise convolution surgery traces on JAX (:mod:`surgery.engine.xla_depthwise`)
computes Keras's own, to float round-off, for every stride, padding, dilation, depth
multiplier, rank and data format, and a compiled model call that uses it agrees with the
model's eager call (a JAX child: tests/xla_depthwise_child.py)."""
import pytest

from keras3_child import run_case

pytest.importorskip("jax")


@pytest.fixture(scope="module")
def result():
    return run_case("jax", "xla_depthwise_child.py")


def test_shifted_form_equals_keras_depthwise_conv(result):
    assert result["backend"] == "jax"
    for case in result["ops"]:
        low = case["case"].startswith("bfloat16")
        assert case["shape_ok"], case
        # bfloat16 keeps 8 bits of mantissa: its inputs and result alone are off by ~0.4 %
        assert case["diff"] <= (2e-2 if low else 1e-5) * max(1.0, case["scale"]), case
        assert case["scale"] > 0.1, case  # outputs that could have differed
        assert not low or case["dtype"] == "bfloat16", case


def test_compiled_call_traces_it_and_agrees_with_the_eager_call(result):
    model = result["model"]
    # DepthwiseConv2D and SeparableConv2D's depthwise half, traced once each
    assert model["traced_shifted"] == 2, model
    assert model["diff"] <= 1e-5 * max(1.0, model["scale"]) and model["scale"] > 0.01, model
    assert model["restored"], "Keras's depthwise_conv must be back after the call"
