"""One error model: every mistake in a library call raises ``surgery.SurgeryError`` (a
``ValueError``) naming the argument and the way out."""
import numpy as np
import pytest

import surgery
from surgery import keras

L = keras.layers


@pytest.fixture
def model():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = L.Conv2D(8, 3, padding="same", name="c2")(x)
    return keras.Model(inputs, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(x)))


PLAN_CASES = {
    # argument: (kwargs, what the message must say)
    "ratio too big": (dict(ratio=1.5), r"ratio must be in \[0, 1\), got 1.5"),
    "ratio negative": (dict(ratio=-0.1), r"ratio must be in \[0, 1\).*ratio=0.3"),
    "ratio None": (dict(ratio=None), r"ratio must be in .*got None"),
    "ratio string": (dict(ratio="0.5"), r"ratio must be in .*got '0.5'"),
    "threshold negative": (dict(threshold=-1.0), r"threshold must be a finite number >= 0"),
    "threshold nan": (dict(threshold=float("nan")), r"threshold must be a finite .*ratio="),
    "flops_target 0": (dict(flops_target=0.0), r"flops_target must be in \(0, 1\), got 0.0"),
    "flops_target 1": (dict(flops_target=1.0), r"flops_target must be in \(0, 1\).*=0.5"),
    "flops_target and threshold": (dict(flops_target=0.5, threshold=0.1),
                                   r"flops_target and threshold.*only one"),
    "round_to 0": (dict(round_to=0), r"round_to must be an integer >= 1, got 0; .*use 1"),
    "round_to float": (dict(round_to=2.5), r"round_to must be an integer >= 1, got 2.5"),
    "min_channels -1": (dict(min_channels=-1), r"min_channels must be an integer >= 0, got -1"),
    "scope": (dict(scope="everywhere"), r"scope must be 'local' or 'global'"),
    "criterion": (dict(criterion="l7"), r"unknown criterion 'l7'; known criteria: .*l1.*"
                                        r"criterion="),
    "criterion type": (dict(criterion=3), r"criterion must be a name .* or a callable"),
    "policy": (dict(policy="best"), r"unknown policy 'best'; known policies: .*aggregate"
                                    r".*policy="),
    "ignore name": (dict(ignore=["nope"]), r"ignore names layers .* does not have: \['nope'\]"),
    "ignore string": (dict(ignore="c1"), r"ignore must be a list .*ignore=\['c1'\]"),
    "per_layer name": (dict(per_layer={"nope": 0.5}),
                       r"per_layer names layers .* does not have: \['nope'\]"),
    "per_layer ratio": (dict(per_layer={"c1": 2.0}), r"per_layer\['c1'\] must be in \[0, 1\)"),
    "per_layer type": (dict(per_layer=["c1"]), r"per_layer must be a dict"),
    "apoz without data": (dict(criterion="apoz"), r"criterion='apoz' is data-driven and "
                                                  r"needs data="),
    "taylor without data": (dict(criterion="taylor"), r"'taylor' is data-driven.*data="),
    "thinet without data": (dict(criterion="thinet"), r"'thinet' is data-driven.*data="),
    "flops_target without data": (dict(criterion="apoz", flops_target=0.5),
                                  r"'apoz' is data-driven.*data="),
}


@pytest.mark.parametrize("case", sorted(PLAN_CASES))
def test_plan_argument_errors(model, case):
    kwargs, message = PLAN_CASES[case]
    with pytest.raises(surgery.SurgeryError, match=message):
        surgery.plan(model, **kwargs)
    with pytest.raises(surgery.SurgeryError, match=message):  # prune plans the same way
        surgery.prune(model, **kwargs)


def test_surgery_error_is_a_value_error():
    assert issubclass(surgery.SurgeryError, ValueError)


MODEL_CALLS = {
    "plan": lambda m: surgery.plan(m, ratio=0.5),
    "plan flops_target": lambda m: surgery.plan(m, flops_target=0.5),
    "apply": lambda m: surgery.apply(m, surgery.PrunePlan()),
    "prune": lambda m: surgery.prune(m, ratio=0.5),
    "verify": lambda m: surgery.verify(m, m, surgery.PrunePlan(), np.zeros((1, 8, 8, 3))),
    "channel_groups": lambda m: surgery.channel_groups(m),
    "count_flops": lambda m: surgery.count_flops(m),
    "zero_channels": lambda m: surgery.zero_channels(m, {}),
}


@pytest.mark.parametrize("call", sorted(MODEL_CALLS))
@pytest.mark.parametrize("bad", [None, "model.h5"], ids=["None", "path"])
def test_model_that_is_none_or_a_path(call, bad):
    name = call.split()[0]
    message = rf"{name}\(model=None\): model must be a keras.Model.*keras.models.load_model" \
        if bad is None else \
        rf"{name}\(model='model.h5'\): model must be a keras.Model, not a path; load it " \
        r"first with keras.models.load_model"
    with pytest.raises(surgery.SurgeryError, match=message):
        MODEL_CALLS[call](bad)


def test_verify_checks_the_pruned_model_too(model):
    with pytest.raises(surgery.SurgeryError, match=r"verify\(pruned=...\)\(model=None\)"):
        surgery.verify(model, None, surgery.PrunePlan(), np.zeros((1, 8, 8, 3)))


def test_apply_wants_a_plan(model):
    with pytest.raises(surgery.SurgeryError, match=r"apply\(plan=...\): plan must be a "
                                                   r"PrunePlan.*from_json"):
        surgery.apply(model, {"c1": [0]})


def test_not_a_model_object():
    with pytest.raises(surgery.SurgeryError, match=r"plan\(model=...\): model must be a "
                                                   r"keras.Model, got int"):
        surgery.plan(3)


def test_criteria_and_policies_raise_surgery_error_directly(model):
    from surgery.pruning.criteria import channel_scores, get_criterion
    from surgery.pruning.policies import get_policy

    with pytest.raises(surgery.SurgeryError, match="unknown criterion 'l7'"):
        get_criterion("l7")
    with pytest.raises(surgery.SurgeryError, match="unknown policy 'best'.*policy="):
        get_policy("best")
    with pytest.raises(surgery.SurgeryError, match="'apoz' is data-driven and needs data="):
        channel_scores(model, ["c1"], "apoz")


def test_good_arguments_still_plan(model):
    """The checks refuse only mistakes: edge values that make sense are accepted."""
    assert surgery.plan(model, ratio=0.0).deletions == {}
    assert surgery.plan(model, ratio=0.5, min_channels=0, round_to=2).deletions
    assert surgery.plan(model, threshold=0.0).deletions == {}
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    y = np.eye(2, dtype="float32")[[0, 1, 0, 1]]
    assert surgery.plan(model, ratio=0.5, criterion="apoz", data=(x, y)).deletions
