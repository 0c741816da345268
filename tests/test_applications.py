"""Every keras.applications family (weights=None, small inputs) is planned and pruned at
ratio 0.3: lower parameter count, and equal outputs to the zeroed original (≤ 1e-5)."""
import numpy as np
import pytest

import surgery
from surgery import keras
from equivalence import randomize_weights

A = keras.applications
SMALL = dict(weights=None, input_shape=(32, 32, 3), classes=5)
FAMILIES = {
    "VGG": lambda: A.VGG16(**SMALL),
    "ResNet": lambda: A.ResNet50(**SMALL),
    "ResNetV2": lambda: A.ResNet50V2(**SMALL),
    "ResNetRS": lambda: A.ResNetRS50(**SMALL, include_preprocessing=False),
    "Inception": lambda: A.InceptionV3(**{**SMALL, "input_shape": (75, 75, 3)}),
    "InceptionResNet": lambda: A.InceptionResNetV2(**{**SMALL, "input_shape": (75, 75, 3)}),
    "Xception": lambda: A.Xception(**{**SMALL, "input_shape": (71, 71, 3)}),
    "MobileNet": lambda: A.MobileNet(**SMALL, alpha=0.25),
    "MobileNetV2": lambda: A.MobileNetV2(**SMALL, alpha=0.35),
    "MobileNetV3": lambda: A.MobileNetV3Small(**SMALL),
    "DenseNet": lambda: A.DenseNet121(**SMALL),
    "NASNet": lambda: A.NASNetMobile(**SMALL),
    "EfficientNet": lambda: A.EfficientNetB0(**SMALL),
    "EfficientNetV2": lambda: A.EfficientNetV2B0(**SMALL),
    "RegNetX": lambda: A.RegNetX002(**SMALL),
    "RegNetY": lambda: A.RegNetY002(**SMALL),
    "ConvNeXt": lambda: A.ConvNeXtTiny(**SMALL),
}


# Parameters after plan(ratio=0.3) + apply before the layer-rules refactor (issue 13): the
# cut must be no smaller now. InceptionResNetV2 skipped 50 groups and NASNet 10 then;
# MobileNetV3 skipped its hard-swish and scaled-residual groups.
PARAMS_AFTER_BEFORE_RULES = {
    "ConvNeXt": 20061347, "DenseNet": 3569215, "EfficientNet": 2057824,
    "EfficientNetV2": 2981739, "Inception": 10754520, "InceptionResNet": 35994060,
    "MobileNet": 113732, "MobileNetV2": 219779, "MobileNetV3": 1280210, "NASNet": 2383050,
    "RegNetX": 1245889, "RegNetY": 1500424, "ResNet": 11641456, "ResNetRS": 16607376,
    "ResNetV2": 11625392, "VGG": 16517096, "Xception": 10311867,
}


def logits(model):
    """The model without its final softmax, so outputs are not saturated."""
    last = model.layers[-1]
    if type(last).__name__ == "Activation" or getattr(last, "activation", None) is None:
        return model
    config = last.get_config()
    config["activation"] = "linear"
    head = type(last).from_config(config)
    out = head(last.input)
    head.set_weights(last.get_weights())
    return keras.Model(model.inputs, out)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_prunes_with_equivalence(family):
    model = randomize_weights(logits(FAMILIES[family]()), seed=1)
    x = np.random.default_rng(0).normal(size=(2,) + model.input_shape[1:]).astype("float32")
    p = surgery.plan(model, ratio=0.3)
    pruned = surgery.apply(model, p)
    assert pruned.count_params() < model.count_params()
    assert pruned.count_params() <= PARAMS_AFTER_BEFORE_RULES[family]
    assert surgery.count_flops(pruned) < surgery.count_flops(model)
    error = surgery.verify(model, pruned, p, x)
    assert error <= 1e-5, f"{family}: pruned differs from zeroed original by {error:.3g}"
    # the zeroing must change the outputs, or the check proves nothing
    zeroed = surgery.zero_channels(model, p.deletions)
    assert np.max(np.abs(zeroed(x) - model(x))) > 1e-4
    # the classifier keeps every output unit
    assert pruned.output_shape == model.output_shape
    if family == "ConvNeXt":
        assert any("LayerNormalization" in reason for reason in p.skipped.values())


# Groups that plan(ratio=0.3) skipped before the layer-rules refactor (issue 13): channel
# groups now split a conv that a Concatenate is added to, so far fewer are left alone.
# Exactness of these very plans is checked by test_family_prunes_with_equivalence.
SKIPPED_BEFORE_RULES = {"InceptionResNet": 50, "NASNet": 10}


@pytest.mark.parametrize("family", sorted(SKIPPED_BEFORE_RULES))
def test_sub_group_splitting_skips_fewer_groups(family):
    model = FAMILIES[family]()
    p = surgery.plan(model, ratio=0.3)
    assert len(p.skipped) < SKIPPED_BEFORE_RULES[family], p.skipped
    assert list(p.skipped.values()) == ["reaches a model output"]
    members = [m for g in p.groups for m in g]
    assert len(members) > len(set(members)), "no producer was split between groups"
