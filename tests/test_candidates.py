"""Candidate allocations chosen after adaptive BN (issue 20, EagleEye): ``surgery.plan(...,
flops_target=F, candidates=N, data=...)`` and ``--candidates`` on tf-keras (Keras 3: in
tests/batchnorm_cases.py, one child per backend).

Oracles: every candidate reaches the budget and keeps each layer's channel order; the
winner's score is recomputed here from scratch (cut, recalibrate, top-1 agreement with the
original, in numpy) and is the highest; a plan that changes nothing beats one that cuts;
the chosen plan is exact (zeroing oracle) and its zeroing moves the outputs.
"""
import json

import numpy as np
import pytest

import surgery
from surgery import keras
from surgery.errors import SurgeryError
from surgery.calibration import candidates as selection
from surgery.calibration.stand_in import StandIn
from surgery.engine.graph import resolve
from surgery.pruning import allocation as budget
from surgery.pruning.criteria import l1


def _model():
    from surgery.models import mobilenet_v2

    keras.utils.set_random_seed(0)
    model = mobilenet_v2(input_shape=(32, 32, 3), classes=10, alpha=0.35, l1=0.0,
                         settings=((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2)),
                         last_channels=64)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # statistics and scales that a cut makes stale
        if type(layer).__name__.startswith("BatchNormalization"):
            shape = tuple(layer.moving_mean.shape)
            layer.moving_mean.assign(rng.normal(0, 0.5, shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))
            layer.gamma.assign(rng.uniform(0.2, 1.5, shape).astype("float32"))
    return model


@pytest.fixture(scope="module")
def model_and_data():
    x = np.random.default_rng(1).normal(0.0, 1.0, (96, 32, 32, 3)).astype("float32")
    return _model(), x


def test_variants_keep_each_layers_order_and_span_the_same_cuts(model_and_data):
    model, _ = model_and_data
    names = [l.name for l in model.layers if type(l).__name__ == "Conv2D"][:4]
    plain = l1(model, names)
    for k in (1, 2, 3):
        variant = budget.Variant(k, seed=0)
        perturbed = {n: variant.scores(n, plain[n]) for n in names}
        for n in names:  # the same order within each layer, other spreads across layers
            assert np.array_equal(np.argsort(perturbed[n], kind="stable"),
                                  np.argsort(plain[n], kind="stable"))
        assert any(not np.allclose(perturbed[n] / perturbed[n].mean(),
                                   plain[n] / plain[n].mean()) for n in names)
        ratios = variant.ratios(0.5, [[n] for n in names], 0.9)
        assert len(set(ratios.values())) > 1 and all(0 < r < 0.9 for r in ratios.values())
        top = variant.ratios(0.9, [[n] for n in names], 0.9)
        assert all(abs(r - 0.9) < 1e-12 for r in top.values())  # same reach as the plain plan
    assert all(np.array_equal(budget.Variant(0).scores(n, plain[n]), plain[n]) for n in names)
    assert budget.Variant(0).ratios(0.5, [names], 0.9) == {}


def test_kind_factors_move_budget_between_kinds_of_unit_and_leave_cnns_alone(
        model_and_data):
    """A candidate's factor per kind of unit multiplies that kind's normalised scores: a
    large factor on heads keeps every head under ``params_target`` where the plain plan
    cuts some, and on a CNN (channels only) no factor changes the plan."""
    import transformer_models as tm
    from surgery.engine.flatten import flattened
    from surgery.pruning.planning import PlanSpec, Ranking

    def planned(model, target, weight):
        spec = PlanSpec(criterion="l1")
        ranking = Ranking(flattened(resolve(model)), spec)
        if weight is not None:
            ranking = ranking.with_transform(None, weight)
        return budget.plan_for_params(ranking, spec, budget.Budget(
            target, "params_target", "params", greedy=True, by_importance=True))

    def heads_cut(p):
        return sum(c.removed for c in p.cuts if str(c.unit).endswith("heads"))

    vit = tm.vit(keras)
    plain = planned(vit, 0.2, None)
    spared = planned(vit, 0.2, lambda kind: 100.0 if kind == "heads" else 1.0)
    assert heads_cut(plain) > 0 and heads_cut(spared) == 0, (plain.units, spared.units)
    assert abs(spared.settings["params_removed"] - 0.2) <= 0.02
    cnn, _ = model_and_data
    assert planned(cnn, 0.3, lambda kind: 7.0).deletions == planned(cnn, 0.3, None).deletions
    assert budget.Variant(1).kind_factor("heads") != budget.Variant(1).kind_factor("mlp")


def _agreement_recomputed(model, p, x):
    pruned = surgery.recalibrate_batchnorm(surgery.apply(model, p), x, batches=30,
                                           batch_size=32)
    ref = np.argmax(model.predict(x, verbose=0), -1)
    return float(np.mean(np.argmax(pruned.predict(x, verbose=0), -1) == ref))


@pytest.mark.parametrize("scope", ["global", "local"])
def test_candidates_reach_the_budget_and_the_best_wins(model_and_data, monkeypatch, scope):
    model, x = model_and_data
    seen = []
    real = selection.choose_candidate

    def spy(m, plans, data, **kw):
        seen.extend(plans)
        return real(m, plans, data, **kw)

    monkeypatch.setattr(selection, "choose_candidate", spy)
    plain = surgery.plan(model, flops_target=0.3, scope=scope)
    best = surgery.plan(model, flops_target=0.3, scope=scope, candidates=4, data=(x, None))
    assert len(seen) == 4 and best in seen
    assert seen[0].deletions == plain.deletions  # candidate 0: the plain plan
    for p in seen:
        assert abs(p.settings["flops_removed"] - 0.3) <= budget.DEFAULT_TOLERANCE
    assert len({json.dumps(p.deletions, sort_keys=True) for p in seen}) >= 3
    scores = best.settings["candidate_scores"]
    assert scores == [p.settings["candidate_score"] for p in seen]
    assert best.settings["candidate"] == int(np.argmax(scores))
    # every score is that of the plan cut for real (how they were scored before the stand-in)
    recomputed = [_agreement_recomputed(model, p, x) for p in seen]
    assert np.allclose(recomputed, scores, rtol=0, atol=1e-6), (recomputed, scores)
    assert int(np.argmax(recomputed)) == best.settings["candidate"]
    # the chosen plan is an exact cut, and its zeroing changes the model
    pruned = surgery.apply(model, best)
    assert surgery.verify(model, pruned, best, x[:16]) <= 1e-5
    from surgery.engine.zeroing import max_relative_difference, zero_channels

    zeroed = zero_channels(model, best.deletions)
    assert max_relative_difference(model(x[:16], training=False),
                                   zeroed(x[:16], training=False)) > 1e-3


def test_a_plan_that_keeps_the_outputs_wins(model_and_data):
    _, x = model_and_data
    # statistics already those of x: recalibrating the uncut model changes nothing
    model = surgery.recalibrate_batchnorm(_model(), x, batches=30, batch_size=32)
    cut, nothing = surgery.plan(model, ratio=0.5), surgery.plan(model, ratio=0.0)
    assert selection.choose_candidate(resolve(model), [cut, nothing], x) is nothing
    assert nothing.settings["candidate_score"] == 1.0 > cut.settings["candidate_score"]
    assert nothing.settings["candidate"] == 1
    # without classes (one output unit): the negated relative error
    a = [np.array([[1.0], [2.0]])]
    assert selection.agreement(a, a) == 0.0 > selection.agreement(a, [np.array([[1.0], [1.0]])])


def test_plans_the_stand_in_cannot_imitate_are_cut_and_the_model_is_untouched(
        model_and_data, monkeypatch):
    """A plan crossing an approximate layer (``settings["approximate"]``) is cut for real,
    and scores as the same plan zeroed on the stand-in; neither path changes the model."""
    model, x = model_and_data
    before = model.get_weights()
    plans = [surgery.plan(model, ratio=r) for r in (0.5, 0.25)]
    selection.choose_candidate(resolve(model), plans, x)
    zeroed = [p.settings["candidate_score"] for p in plans]
    cuts = []
    real_cut = selection.cut_graph
    monkeypatch.setattr(selection, "cut_graph",
                        lambda graph, p: cuts.append(p) or real_cut(graph, p))
    for p in plans:
        p.settings["approximate"] = ["pretend"]
    selection.choose_candidate(resolve(model), plans, x)
    assert cuts == plans
    assert [p.settings["candidate_score"] for p in plans] == zeroed
    assert zeroed[0] < 1.0 and all(np.array_equal(a, b)
                                   for a, b in zip(before, model.get_weights()))


def test_the_stand_in_is_the_original_again_after_each_plan(model_and_data):
    model, x = model_and_data
    before = model.get_weights()
    stand_in = StandIn(resolve(model))
    for ratio in (0.5, 0.25):
        with stand_in.zeroed(surgery.plan(model, ratio=ratio)):
            stand_in.recalibrate(x)
            during = stand_in.model.get_weights()
            assert sum(not np.array_equal(a, b) for a, b in zip(before, during)) > 20
        after = stand_in.model.get_weights()
        assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_bad_candidates_raise_surgery_errors_naming_the_way_out(model_and_data):
    model, x = model_and_data
    with pytest.raises(SurgeryError, match="candidates must be an integer >= 1"):
        surgery.plan(model, flops_target=0.3, candidates=0)
    with pytest.raises(SurgeryError, match="needs data="):
        surgery.plan(model, flops_target=0.3, candidates=2)
    with pytest.raises(SurgeryError, match="flops_target= or latency_target="):
        surgery.plan(model, ratio=0.3, candidates=2, data=x)


@pytest.fixture(scope="module")
def bn_model_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("candidates") / "model.h5")
    _model().save(path, save_format="h5")
    return path


def test_the_pipeline_compares_candidates_and_reports_them(bn_model_file, tmp_path, capsys):
    import prune_and_finetune as pf

    common = ["--model-path", bn_model_file, "--data", "digits", "--flops-target", "0.3",
              "--finetune-epochs", "1", "--batch-size", "32", "--quiet", "--no-plots",
              "--recalibrate-batches", "2"]
    assert pf.main(common + ["--candidates", "0", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--candidates must be >= 1" in err[0]
    out = tmp_path / "run"
    assert pf.main(common + ["--candidates", "3", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    assert len(report["candidate_scores"]) == 3
    assert report["candidate"] == plan["settings"]["candidate"]
    assert report["candidate_scores"][report["candidate"]] == max(report["candidate_scores"])
    assert "Plan chosen among 3 candidate allocations" in (out / "report.md").read_text()
