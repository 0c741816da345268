"""Budgets over every unit (issue 30): ``flops_target`` costs attention heads and block
widths with the channels, in one allocation.

The cost model's prediction is the oracle: the plan's ``flops_removed`` must equal what
:func:`surgery.count_flops` measures on the cut model, and that must land within 2 points
of the target. Heads must be among the cuts (before, a FLOPs target left every head), and
the cut model must match the zeroed original (``verify``), with zeroing moving the outputs.
The models are tests/transformer_models.py's ViT and BERT-style encoder on tf-keras; the
keras-hub ViT classifier goes through the command line in tests/test_cli_cuts.py.
"""
import numpy as np
import pytest

import surgery
from surgery._backend import keras
from surgery.cost.width import FlopsEstimator
from surgery.engine.graph import resolve
from surgery.engine.zeroing import max_relative_difference
from surgery.pruning.planning import PlanSpec, Ranking

import transformer_models as tm


@pytest.mark.parametrize("case", tuple(tm.BUILDERS))
@pytest.mark.parametrize("target", (0.3, 0.5))
def test_a_flops_target_cuts_heads_and_lands_as_predicted(case, target):
    model = tm.BUILDERS[case](keras)
    x = tm.inputs(case, "float32")
    plan = surgery.plan(model, flops_target=target)
    pruned = surgery.apply(model, plan)
    reached = 1 - surgery.count_flops(pruned) / surgery.count_flops(model)
    assert plan.settings["flops_after"] == surgery.count_flops(pruned)
    assert plan.settings["flops_removed"] == pytest.approx(reached, abs=1e-6)
    assert abs(reached - target) <= 0.02, reached
    heads = [int(pruned.get_layer(f"mha{i}").get_config()["num_heads"]) for i in range(2)]
    assert min(heads) < tm.HEADS, heads
    assert all(axis == "heads" for axes in plan.units.values() for axis in axes)
    zeroed = surgery.zero_channels(model, plan.deletions, plan.units)(x)
    assert max_relative_difference(model(x), zeroed) > 1e-2
    assert surgery.verify(model, pruned, plan, x) <= 1e-5


def test_the_estimate_is_exact_for_every_width_of_heads_and_channels():
    """Any kept widths, not only the planned ones: the estimator against the cut model."""
    model = tm.vit(keras)
    graph = resolve(model)
    ranking = Ranking(graph, PlanSpec(ratio=0.0))
    est = FlopsEstimator(graph, ranking.width_groups(), ranking.unit_groups())
    assert int(round(est.total)) == surgery.count_flops(model)
    rng = np.random.default_rng(0)
    for _ in range(3):
        per_layer = {label: float(rng.uniform(0, 0.9)) for label in ranking.labels}
        plan = ranking.plan(PlanSpec(ratio=0.0, per_layer=per_layer, scope="local"))
        assert plan.units, per_layer
        assert est.cost_of(plan.removed) == pytest.approx(
            surgery.count_flops(surgery.apply(model, plan)), rel=1e-12)


def test_params_target_lands_as_predicted_on_cnns_and_transformers():
    """The parameter count of the cut model is the estimate, on every kind of group."""
    cases = {"vit": lambda: tm.vit(keras), "bert": lambda: tm.bert(keras),
             "mobilenetv2": lambda: keras.applications.MobileNetV2(
                 weights=None, input_shape=(64, 64, 3), alpha=0.35)}
    for name, build in cases.items():
        model = build()
        for target in (0.3, 0.5):
            plan = surgery.plan(model, params_target=target)
            pruned = surgery.apply(model, plan)
            assert plan.settings["params_after"] == pruned.count_params(), name
            reached = 1 - pruned.count_params() / model.count_params()
            assert abs(reached - target) <= 0.02, (name, target, reached)


def test_planted_dead_heads_and_mlp_units_are_the_first_to_go():
    """A head whose query, key, value and output weights are zero, and eight MLP units
    with zero weights in, cost parameters and do nothing: a target of exactly their
    parameters removes them and nothing else, and the outputs do not move."""
    model = tm.vit(keras)
    mha = model.get_layer("mha0")
    w = mha.get_weights()
    for k in (0, 2, 4):                      # query, key, value kernels (width, heads, dim)
        w[k][:, 1, :] = 0
    w[6][1] = 0                              # output kernel (heads, dim, width)
    mha.set_weights(w)
    up = model.get_layer("mlp0_up")
    kernel, bias = up.get_weights()
    kernel[:, :8], bias[:8] = 0, 0
    up.set_weights([kernel, bias])
    head = 3 * (tm.WIDTH * tm.KEY_DIM + tm.KEY_DIM) + tm.KEY_DIM * tm.WIDTH
    unit = tm.WIDTH + 1 + tm.WIDTH           # a column and bias in, a row out
    target = (head + 8 * unit) / model.count_params() - 1e-7
    plan = surgery.plan(model, params_target=target)
    cut = {c.group: c.layers for c in plan.cuts if c.removed}
    assert cut == {"mha0:heads": {"mha0": [1]}, "mlp0_up": {"mlp0_up": list(range(8))}}, cut
    x = tm.inputs("vit", "float32")
    pruned = surgery.apply(model, plan)
    assert max_relative_difference(model(x), pruned(x)) <= 1e-5


def test_a_cost_model_blind_to_units_cuts_none():
    """``units=False`` (what a latency target plans with: its tables time channels only)
    leaves every head alone, while the same ratio with units cuts heads."""
    graph = resolve(tm.vit(keras))
    blind = Ranking(graph, PlanSpec(ratio=0.5, units=False))
    assert all(g.axis is None for g in blind.groups)
    assert not blind.plan(blind.spec).units
    assert Ranking(graph, PlanSpec(ratio=0.5)).plan(PlanSpec(ratio=0.5)).units
