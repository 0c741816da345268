"""Channel groups, reconciliation policies and prune plans."""
import json

import numpy as np
import pytest

import surgery
from surgery import keras
from equivalence import randomize_weights
from surgery.pruning.planning import keep_count

L = keras.layers
X32 = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")


@pytest.fixture(scope="module")
def mobilenet():
    keras.backend.clear_session()
    # seeded kernels: with some draws (of seeds 0-5, five remove 1-2 channels, seed 3 none)
    # no channel is proposed by every member of a shortcut group at ratio 0.3
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None,
                                           classes=5, classifier_activation=None)
    return randomize_weights(model, seed=2)


@pytest.fixture(autouse=True)
def _fresh_keras_session():  # the module fixture's model must outlive each test
    yield


def add_inputs(model):
    """Producer layers feeding each side of every residual Add."""
    pairs = []
    for layer in model.layers:
        if type(layer).__name__ == "Add":
            pairs.append([t._keras_history.layer.name for t in layer.input])
    return pairs


def producer_of(model, name):
    """Walk back from a BN to the conv that feeds it."""
    layer = model.get_layer(name)
    while not hasattr(layer, "filters"):
        inputs = layer.input if isinstance(layer.input, list) else [layer.input]
        layer = inputs[0]._keras_history.layer
    return layer.name


def test_mobilenet_groups_chain_shortcuts_and_keep_depthwise_with_expansion(mobilenet):
    groups = {g.name: g for g in surgery.channel_groups(mobilenet)}
    stage = groups["block_3_project"]
    assert stage.producers == ["block_3_project", "block_4_project", "block_5_project"]
    expand = groups["block_4_expand"]
    assert "block_4_depthwise" in expand.followers and expand.producers == ["block_4_expand"]
    assert groups["predictions"].skipped == "reaches a model output"


@pytest.mark.parametrize("policy", ["aggregate", "intersection", "deepest", "depthwise"])
def test_every_policy_gives_a_valid_model_with_shortcuts_cut_alike(mobilenet, policy):
    p = surgery.plan(mobilenet, ratio=0.3, policy=policy)
    pruned = surgery.apply(mobilenet, p)
    assert surgery.verify(mobilenet, pruned, p, X32) <= 1e-5
    assert pruned.count_params() < mobilenet.count_params()
    for a, b in add_inputs(mobilenet):
        pa, pb = producer_of(mobilenet, a), producer_of(mobilenet, b)
        if pa in p.deletions or pb in p.deletions:
            assert p.deletions[pa] == p.deletions[pb]
    for members in p.groups:
        assert len({tuple(p.deletions.get(m, ())) for m in members}) == 1


def test_intersection_removes_only_channels_every_member_proposed(mobilenet):
    k_ratio = 0.3
    p = surgery.plan(mobilenet, ratio=k_ratio, policy="intersection")
    scores = surgery.pruning.criteria.channel_scores(
        mobilenet, [m for g in p.groups for m in g], "l1")
    for members in p.groups:
        chosen = set(p.deletions.get(members[0], ()))
        size = len(scores[members[0]])
        k = size - keep_count(size, k_ratio, 1, 1, 1)
        for m in members:
            proposed = set(np.argsort(scores[m], kind="stable")[:k].tolist())
            assert chosen <= proposed
    multi = [g for g in p.groups if len(g) > 1]
    assert multi and sum(len(p.deletions.get(g[0], ())) for g in multi) > 0


def test_deepest_follows_the_deepest_member(mobilenet):
    p = surgery.plan(mobilenet, ratio=0.5, policy="deepest")
    scores = surgery.pruning.criteria.channel_scores(mobilenet, ["block_5_project"], "l1")
    deleted = p.deletions["block_3_project"]
    expected = np.sort(np.argsort(scores["block_5_project"], kind="stable")[:len(deleted)])
    assert deleted == expected.tolist()


def test_plan_json_round_trip_and_summary(mobilenet):
    p = surgery.plan(mobilenet, ratio=0.25, round_to=4)
    again = surgery.PrunePlan.from_json(p.to_json())
    assert again == p
    json.loads(p.to_json())
    table = p.summary()
    assert "block_4_expand" in table and "skipped: reaches a model output" in table
    groups = {g.name: g for g in surgery.channel_groups(mobilenet)}
    for name, channels in p.deletions.items():
        if name in groups:
            assert (groups[name].size - len(channels)) % 4 == 0 or \
                len(channels) == 0


def test_round_to_min_channels_per_layer_and_ignore(mobilenet):
    p = surgery.plan(mobilenet, ratio=0.9, min_channels=8,
                     per_layer={"block_4_expand": 0.0}, ignore=["block_5_expand"])
    groups = {g.name: g for g in surgery.channel_groups(mobilenet)}
    assert "block_4_expand" not in p.deletions
    assert "block_5_expand" in p.skipped and "ignored" in p.skipped["block_5_expand"]
    for name, channels in p.deletions.items():
        if name in groups:
            assert groups[name].size - len(channels) >= min(8, groups[name].size)


def test_global_scope_spends_one_budget_across_groups(mobilenet):
    p = surgery.plan(mobilenet, ratio=0.4, scope="global")
    sizes = [len(p.deletions.get(g[0], ())) / p.sizes[g[0]] for g in p.groups]
    assert len(set(np.round(sizes, 2))) > 2  # not the same ratio everywhere
    total = sum(p.sizes[g[0]] for g in p.groups)
    assert abs(p.channels_removed - 0.4 * total) <= len(p.groups)
    pruned = surgery.apply(mobilenet, p)
    assert surgery.verify(mobilenet, pruned, p, X32) <= 1e-5


def test_threshold_mode_removes_only_dead_channels():
    inp = L.Input((16, 16, 3))
    x = L.Conv2D(8, 3, name="c1")(inp)
    x = L.ReLU()(x)
    x = L.Conv2D(6, 1, name="c2")(x)
    out = L.Dense(3)(L.GlobalAveragePooling2D()(x))
    model = randomize_weights(keras.Model(inp, out))
    kernel, bias = model.get_layer("c1").get_weights()
    kernel[..., [2, 5]] = 0.0
    model.get_layer("c1").set_weights([kernel, bias])
    p = surgery.plan(model, threshold=1e-6)
    assert p.deletions == {"c1": [2, 5]}


def test_grouped_conv_loses_channels_group_wise():
    inp = L.Input((16, 16, 3))
    x = L.Conv2D(12, 1, name="c1")(inp)
    x = L.Conv2D(12, 3, groups=3, name="g")(x)
    out = L.Dense(3)(L.GlobalAveragePooling2D()(x))
    model = randomize_weights(keras.Model(inp, out))
    p = surgery.plan(model, ratio=0.5)
    for name in ("c1", "g"):
        per_group = np.bincount(np.array(p.deletions[name]) // 4, minlength=3)
        assert per_group.tolist() == [2, 2, 2]
    pruned = surgery.apply(model, p)
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype("float32")
    assert surgery.verify(model, pruned, p, x) <= 1e-5


def test_layer_norm_and_outputs_are_skipped_not_guessed():
    inp = L.Input((8, 8, 3))
    x = L.Conv2D(8, 1, name="normed")(inp)
    x = L.LayerNormalization()(x)
    x = L.Conv2D(6, 1, name="free")(x)
    x = L.ReLU()(x)
    out = L.Conv2D(4, 1, name="out")(x)
    model = keras.Model(inp, out)
    p = surgery.plan(model, ratio=0.5)
    assert "LayerNormalization" in p.skipped["normed"]
    assert p.skipped["out"] == "reaches a model output"
    assert set(p.deletions) == {"free"}


def test_bad_arguments_are_clear():
    inp = L.Input((8, 8, 3))
    model = keras.Model(inp, L.Conv2D(2, 1)(L.Conv2D(4, 1)(inp)))
    with pytest.raises(ValueError, match="unknown policy 'best'"):
        surgery.plan(model, policy="best")
    with pytest.raises(ValueError, match="ratio must be in"):
        surgery.plan(model, ratio=1.5)
    with pytest.raises(ValueError, match="does not have.*'nope'"):
        surgery.plan(model, ignore=["nope"])


def test_count_flops_by_hand():
    inp = L.Input((10, 10, 3))
    x = L.Conv2D(4, 3, padding="same", name="conv")(inp)           # 10*10*4*3*3*3 MACs
    x = L.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(x)  # 5*5*4*9
    x = L.Conv2D(6, 1, groups=2, name="grouped")(x)                 # 5*5*6*2
    x = L.GlobalAveragePooling2D()(x)
    out = L.Dense(5, name="fc")(x)                                  # 6*5
    model = keras.Model(inp, out)
    expected = {"conv": 2 * 10 * 10 * 4 * 27, "dw": 2 * 5 * 5 * 4 * 9,
                "grouped": 2 * 5 * 5 * 6 * 2, "fc": 2 * 6 * 5}
    assert surgery.count_flops(model, per_layer=True) == expected
    assert surgery.count_flops(model) == sum(expected.values())
