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
from surgery.cost.params import ParamsEstimator
from surgery.cost.table import LatencyEstimator, LatencyTable
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


@pytest.mark.parametrize("criterion", ("l1", "activation"))
def test_planted_dead_heads_and_mlp_units_are_the_first_to_go(criterion):
    """A head whose query, key, value and output weights are zero, and eight MLP units
    with zero weights in, cost parameters and do nothing: a target of exactly their
    parameters removes them and nothing else, and the outputs do not move; by weight norm
    and by Minitron's activations (the head's context, from the inputs alone)."""
    model = tm.vit(keras)
    tm.plant_dead_units(model, hidden=False)
    head = 3 * (tm.WIDTH * tm.KEY_DIM + tm.KEY_DIM) + tm.KEY_DIM * tm.WIDTH
    unit = tm.WIDTH + 1 + tm.WIDTH           # a column and bias in, a row out
    target = (head + 8 * unit) / model.count_params() - 1e-7
    x = tm.inputs("vit", "float32")
    plan = surgery.plan(model, params_target=target, criterion=criterion,
                        data=x if criterion == "activation" else None)
    cut = {c.group: c.layers for c in plan.cuts if c.removed}
    assert cut == {"mha0:heads": {"mha0": [1]}, "mlp0_up": {"mlp0_up": list(range(8))}}, cut
    pruned = surgery.apply(model, plan)
    assert max_relative_difference(model(x), pruned(x)) <= 1e-5


def test_head_widths_by_activation_are_those_the_data_leaves_unused():
    """Minitron's activations for head widths: a key channel whose query weights are zero
    adds nothing to the attention logits, and a value channel whose values are a thousandth
    of the rest next to nothing to the contexts, whatever their other weights (ten times
    the rest here, so weight norms keep them). With one key and one value channel to go
    from each layer, the activations take exactly those; weight norms take others."""
    model = tm.vit(keras)
    for i in range(2):
        layer = model.get_layer(f"mha{i}")
        # query, key, value and output kernels, each with its bias
        qk, qb, kk, kb, vk, vb, ok, ob = layer.get_weights()
        qk[..., 2], qb[..., 2], kk[..., 2] = 0.0, 0.0, 10 * kk[..., 2]
        vk[..., 5], vb[..., 5], ok[:, 5] = 1e-3 * vk[..., 5], 1e-3 * vb[..., 5], 10 * ok[:, 5]
        layer.set_weights([qk, qb, kk, kb, vk, vb, ok, ob])
    x = tm.inputs("vit", "float32")
    planted = {(f"mha{i}", axis): [c] for i in range(2)
               for axis, c in (("key_dim", 2), ("value_dim", 5))}
    for criterion in ("activation", "l2"):
        plan = surgery.plan(model, ratio=1 / tm.KEY_DIM, heads=False, head_dims=True,
                            criterion=criterion, data=x)
        widths = {(layer, axis): v for layer, axes in plan.units.items()
                  for axis, v in axes.items() if axis in ("key_dim", "value_dim")}
        assert set(widths) == set(planted), widths
        if criterion == "activation":
            assert widths == planted, widths
            pruned = surgery.apply(model, plan)
            assert surgery.verify(model, pruned, plan, x) <= 1e-5
        else:
            assert all(widths[k] != planted[k] for k in planted), widths


def test_a_cost_model_blind_to_units_cuts_none():
    """``units=False`` (channels only) leaves every head alone, while the same ratio with
    units cuts heads."""
    graph = resolve(tm.vit(keras))
    blind = Ranking(graph, PlanSpec(ratio=0.5, units=False))
    assert all(g.axis is None for g in blind.groups)
    assert not blind.plan(blind.spec).units
    assert Ranking(graph, PlanSpec(ratio=0.5)).plan(PlanSpec(ratio=0.5)).units


def test_a_latency_plan_spends_on_heads_its_tables_price():
    """A latency plan costs heads by their tables (``"layer:axis"``, seconds over the kept
    count), as channels by theirs: with heads priced cheap to keep and MLP units dear, the
    plan cuts heads; the tables' prediction is what the plan records."""
    from surgery.calibration.latency import plan_for_latency

    graph = resolve(tm.vit(keras))
    tables = {f"mha{b}:heads": LatencyTable([1, 2, 4], [0], [[0.1], [0.2], [0.4]])
              for b in (0, 1)}
    tables.update({f"mlp{b}_up": LatencyTable([16], [8, 32], [[0.05, 0.2]]) for b in (0, 1)})
    p = plan_for_latency(graph, 0.3, tables=tables, whole=1.6, check=False, round_to=8,
                         progress=False)
    heads = {layer: len(axes.get("heads", ())) for layer, axes in p.units.items()}
    assert sum(heads.values()) > 0, p.summary()
    assert abs(p.settings["latency_predicted"] - 0.3) <= 0.03
    model = surgery.apply(graph.model, p)
    x = np.random.default_rng(0).normal(size=(2, *graph.model.input_shape[1:]))
    assert surgery.verify(graph.model, model, p, x.astype("float32")) <= 1e-5


def test_round_to_per_kind_of_unit():
    """An integer ``round_to`` rounds MLP widths, not heads (4 heads at round_to=8 still
    lose some); a mapping rounds each kind as named; an unknown kind is one clear error."""
    model = tm.vit(keras)
    p = surgery.plan(model, ratio=0.5, round_to=8)
    assert all(len(a["heads"]) == 2 for a in p.units.values())
    assert all(len(v) % 8 == 0 for v in p.deletions.values())
    # (this model's MLP widths are Dense layers' channels; keras-hub blocks' are "mlp")
    q = surgery.plan(model, ratio=0.6, round_to={"heads": 2, "channels": 16})
    assert all(len(a["heads"]) == 2 for a in q.units.values())   # 4 - 2.4 -> 2 of 4 kept
    assert all(32 - len(v) == 16 for v in q.deletions.values())
    with pytest.raises(surgery.SurgeryError, match="round_to.*'hidden'"):
        surgery.plan(model, ratio=0.5, round_to={"hidden": 8})


def test_dead_hidden_channels_heads_and_mlp_units_are_the_first_to_go():
    """The same with the hidden (residual) width prunable (no mean-centred norms): three
    dead hidden channels join the dead head and MLP units, and a target of exactly their
    parameters removes those and nothing else (tf-keras; Keras 3 with RMS norms in
    tests/keras3_depth_cases.py)."""
    model = tm.vit(keras, norm=None)
    deletions, groups, units = tm.plant_dead_units(model)
    oracle = surgery.PrunePlan.from_deletions(deletions, groups, units=units)
    share = 1 - surgery.apply(model, oracle).count_params() / model.count_params()
    plan = surgery.plan(model, params_target=share - 1e-7)
    cut_units = {layer: {a: v for a, v in axes.items() if v}
                 for layer, axes in plan.units.items() if any(axes.values())}
    assert plan.deletions == deletions and cut_units == units, plan.summary()
    x = tm.inputs("vit", "float32")
    assert max_relative_difference(model(x), surgery.apply(model, plan)(x)) <= 1e-5


def test_bias_compensation_folds_removed_units_means_and_verifies():
    """FLAP's compensation: with ``compensate=True`` each removed MLP unit's mean output
    on the calibration inputs is folded into the bias that reads it. ``verify`` compares
    against the compensated zeroed original (exact), the compensated cut differs from the
    plain one, and it stays closer to the original model on the calibration data; heads
    (read through an attention, not a bias) are listed as left alone."""
    model = tm.vit(keras)
    x = tm.inputs("vit", "float32", n=64, seed=1)
    plain = surgery.plan(model, ratio=0.5)
    folded = surgery.plan(model, ratio=0.5, compensate=True, data=x)
    record = folded.settings["compensation"]
    assert sorted(record["channels"]) == ["mlp0_up", "mlp1_up"]
    assert set(record["skipped"]) == {"mha0:heads", "mha1:heads"}
    small, small_plain = surgery.apply(model, folded), surgery.apply(model, plain)
    assert surgery.verify(model, small, folded, x) <= 1e-5
    assert max_relative_difference(small(x), small_plain(x)) > 1e-3
    error = [float(np.abs(np.asarray(m(x)) - np.asarray(model(x))).mean())
             for m in (small, small_plain)]
    assert error[0] < error[1], error
    again = surgery.PrunePlan.from_json(folded.to_json())
    assert max_relative_difference(surgery.apply(model, again)(x), small(x)) <= 1e-6
    with pytest.raises(surgery.SurgeryError, match=r"compensate=True\) needs data="):
        surgery.plan(model, ratio=0.5, compensate=True)
    with pytest.raises(surgery.SurgeryError, match="yielded no examples"):
        surgery.plan(model, ratio=0.5, compensate=True, data=x[:0])


def test_plans_that_cut_other_kinds_of_unit_keep_their_own_latency_curve(tmp_path):
    """A plan that removes blocks saves time otherwise than one that trims widths: the
    latency loop keeps each kind of plan's checks on a curve of its own (channels alone:
    the architecture's key, as before), or a width plan's scale would send a depth plan
    far past its target (measured: 77.9 % removed for a 50 % target)."""
    from surgery.calibration.latency import _Bench

    graph = resolve(tm.vit(keras))
    rt = surgery.cost.get_runtime("onnxruntime")
    keys = [_Bench.open(graph, rt, 1, 1, str(tmp_path), timed=False, kinds=kinds).curve_key
            for kinds in (["channels"], ["channels", "heads"], ["heads", "blocks"],
                          ["blocks", "heads", "blocks"])]
    bench = _Bench.open(graph, rt, 1, 1, str(tmp_path), timed=False)
    assert keys[0] == bench.architecture == bench.curve_key
    assert len({keys[0], keys[1], keys[2]}) == 3 and keys[2] == keys[3]


@pytest.mark.parametrize("case", tuple(tm.BUILDERS))
def test_head_widths_are_costed_with_the_head_count_under_a_budget(case):
    """``head_dims=True`` under a FLOPs and a parameter target: key and value widths go
    along with whole heads of the same layers, and the cut model's FLOPs and parameters are
    exactly the predicted ones (a head's width multiplies with the head count: the cost
    models hold a term in both counts, without which these estimates miss)."""
    model = tm.BUILDERS[case](keras)
    x = tm.inputs(case, "float32")
    graph = resolve(model)
    ranking = Ranking(graph, PlanSpec(ratio=0.0, head_dims=True))
    estimators = (FlopsEstimator(graph, ranking.width_groups(), ranking.unit_groups()),
                  ParamsEstimator(graph, ranking.width_groups(), ranking.unit_groups()))
    rng = np.random.default_rng(0)
    for _ in range(3):  # any kept widths, not only the planned ones
        per_layer = {label: float(rng.uniform(0.3, 0.9)) for label in ranking.labels}
        plan = ranking.plan(PlanSpec(ratio=0.0, per_layer=per_layer, scope="local",
                                     head_dims=True))
        pruned = surgery.apply(model, plan)
        assert all({"heads", "key_dim", "value_dim"} <= set(axes) and
                   all(axes.values()) for axes in plan.units.values()), plan.units
        assert estimators[0].cost_of(plan.removed) == surgery.count_flops(pruned)
        assert estimators[1].cost_of(plan.removed) == pruned.count_params()
    for target, count in (("flops", surgery.count_flops), ("params", keras.Model.count_params)):
        plan = surgery.plan(model, head_dims=True, **{f"{target}_target": 0.5})
        pruned = surgery.apply(model, plan)
        assert plan.settings[f"{target}_after"] == count(pruned)
        assert abs(1 - count(pruned) / count(model) - 0.5) <= 0.02
        assert any(axes.get("key_dim") or axes.get("value_dim")
                   for axes in plan.units.values()), plan.units
        zeroed = surgery.zero_channels(model, plan.deletions, plan.units)(x)
        assert max_relative_difference(model(x), zeroed) > 1e-2
        assert surgery.verify(model, pruned, plan, x) <= 1e-5


def _bilinear_tables(heads, key_dim, value_dim, alpha=1e-3, beta=2e-3):
    """The "true" time of one attention layer, ``alpha·h·k + beta·h·v`` (h heads of key
    width k and value width v), and its tables: the one-axis ones (the others whole) and
    the two-axis ones, keyed by axis."""
    def true(h, k, v):
        return alpha * h * k + beta * h * v
    grid_h, grid_k, grid_v = [1, 2, 4], [2, 4, 8], [2, 4, 8]
    one = {"heads": LatencyTable(grid_h, [0], [[true(h, key_dim, value_dim)] for h in grid_h]),
           "key_dim": LatencyTable(grid_k, [0], [[true(heads, k, value_dim)] for k in grid_k]),
           "value_dim": LatencyTable(grid_v, [0], [[true(heads, key_dim, v)]
                                                   for v in grid_v])}
    two = {"heads*key_dim": LatencyTable(grid_h, grid_k, [[true(h, k, value_dim) for k in grid_k]
                                                          for h in grid_h]),
           "heads*value_dim": LatencyTable(grid_h, grid_v, [[true(h, key_dim, v)
                                                             for v in grid_v]
                                                            for h in grid_h])}
    return true, one, two


def test_a_latency_plan_costs_head_widths_with_the_head_count():
    """Under ``latency_target`` with ``head_dims=True``, a head's width and the head count
    are priced together: a two-axis table over both counts (``"layer:heads*key_dim"``) adds
    what cutting both saves beyond the one-axis tables. On tables of a time bilinear in
    the counts, the estimate equals that time for any kept widths, and without the
    two-axis tables it does not; a plan from them cuts head widths and verifies."""
    from surgery.calibration.latency import plan_for_latency

    model = tm.vit(keras)
    graph = resolve(model)
    ranking = Ranking(graph, PlanSpec(ratio=0.0, head_dims=True))
    true, one, two = _bilinear_tables(tm.HEADS, tm.KEY_DIM, tm.KEY_DIM)
    tables = {f"mha{b}:{axis}": t for b in (0, 1) for axis, t in {**one, **two}.items()}
    whole = 2 * true(tm.HEADS, tm.KEY_DIM, tm.KEY_DIM) + 0.1
    est = LatencyEstimator(graph, ranking.width_groups(), whole=whole, tables=tables,
                           units=ranking.unit_groups())
    without = LatencyEstimator(graph, ranking.width_groups(), whole=whole,
                               tables={k: v for k, v in tables.items() if "*" not in k},
                               units=ranking.unit_groups())
    index = {label: i for i, label in enumerate(est.labels)}
    rng = np.random.default_rng(0)
    misses = []
    for _ in range(5):
        kept = est.sizes.copy()
        counts = {}
        for b in (0, 1):
            h, k, v = int(rng.integers(1, 5)), int(rng.integers(1, 9)), int(rng.integers(1, 9))
            kept[[index[f"mha{b}:heads"], index[f"mha{b}:key_dim"],
                  index[f"mha{b}:value_dim"]]] = h, k, v
            counts[b] = true(h, k, v)
        expected = 0.1 + counts[0] + counts[1]
        assert float(est.cost(kept)) == pytest.approx(expected, rel=1e-9)
        misses.append(abs(float(without.cost(kept)) - expected))
    assert max(misses) > 1e-3, misses  # the two-axis tables are what makes it exact
    p = plan_for_latency(graph, 0.4, spec=PlanSpec(head_dims=True), tables=tables,
                         whole=whole, check=False, round_to=1, progress=False)
    assert any(axes.get("key_dim") or axes.get("value_dim") for axes in p.units.values()), \
        p.units
    assert abs(p.settings["latency_predicted"] - 0.4) <= 0.03
    x = tm.inputs("vit", "float32")
    pruned = surgery.apply(model, p)
    zeroed = surgery.zero_channels(model, p.deletions, p.units)(x)
    assert max_relative_difference(model(x), zeroed) > 1e-2
    assert surgery.verify(model, pruned, p, x) <= 1e-5


def test_the_tables_time_self_attention_heads_and_widths_in_pairs(tmp_path):
    """Measured in ONNX Runtime: a ``MultiHeadAttention(x, x)`` layer gets one-axis tables
    (heads, key and value widths) and a two-axis table per interacting pair, built from
    the same micro-models: the layer whole is timed once, and a pair table's edges (one
    axis whole) are the one-axis tables' own times."""
    pytest.importorskip("onnxruntime")
    from surgery.cost.cache import TableCache
    from surgery.cost.runtimes import get_runtime

    graph = resolve(tm.vit(keras))
    ranking = Ranking(graph, PlanSpec(ratio=0.0, head_dims=True))
    est = LatencyEstimator(graph, ranking.width_groups(), whole=1.0,
                           runtime=get_runtime("onnxruntime"), batch=4, threads=1,
                           cache=TableCache(dict(runtime="onnxruntime", threads=1, batch=4),
                                            str(tmp_path)),
                           units=ranking.unit_groups(), progress=False)
    for b in (0, 1):
        for width in ("key_dim", "value_dim"):
            pair = est.tables[f"mha{b}:heads*{width}"]
            assert pair.seconds.shape == (3, 3) and np.all(pair.seconds > 0)
            assert np.all(np.diff(pair.seconds, axis=0) >= 0)
            assert np.all(np.diff(pair.seconds, axis=1) >= 0)
    assert len(est._pairs) == 4
    one_axis = {sig for _, _, entries in est._unit_entries(graph) for sig, _ in entries}
    for key, grid_a, grid_b, rows in est._pair_entries(graph):
        edges = {sig for sig, _ in rows[0]} | {row[0][0] for row in rows}  # a or b whole
        inner = {sig for row in rows[1:] for sig, _ in row[1:]}
        assert grid_a[0] == 4 and grid_b[0] == 8, key
        assert edges <= one_axis and not inner & one_axis, key
