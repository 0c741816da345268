"""What the command line cuts is what it reports (issue 29): a keras-hub ViT classifier
whose plan holds only heads and block units is cut, checked by ``verify`` and reported as
saved; a plan that removes nothing stops the run with one line, before any fine-tuning."""
import json
import os

import pytest

import prune_and_finetune as pf
from keras3_child import run_case
from test_keras3_pipeline import _cli


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The ViT classifier, trained once for this file's command lines (each reads it)."""
    return run_case("tensorflow", "keras3_vit_cases.py", "make",
                    tmp_path_factory.mktemp("vit"))


def test_a_vit_classifier_cut_by_ratio_is_reported_as_saved(tmp_path, made):
    out = tmp_path / "run"
    proc = _cli(["--model-path", made["path"], "--data", "digits", "--ratio", "0.5",
                 "--compensate", "--finetune-epochs", "1", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    cut = {c["unit"] for c in plan["cuts"] if c["removed"]}
    assert any(u.endswith("heads") for u in cut) and any(u.endswith("mlp_dim") for u in cut)
    assert report["params_before"] == made["params"]
    assert report["params_after"] <= 0.7 * report["params_before"], report
    assert report["flops_after"] < report["flops_before"]
    assert report["verify_max_diff"] is not None and report["verify_max_diff"] <= 1e-4
    # --compensate: the MLP units' means went into the next biases, verified against that
    assert plan["settings"]["compensation"]["units"], plan["settings"]
    saved = run_case("tensorflow", "keras3_vit_cases.py", "load", out / "pruned.keras")
    assert (saved["params"], saved["flops"]) == (report["params_after"], report["flops_after"])


def _run_vit(tmp_path, made, *flags, reload=True):
    """The ViT classifier (``made``) through the command line with ``flags``: (report,
    plan, cut units); the run succeeded, cut something, verified, and saved a model that
    loads (in a fresh process, unless ``reload=False``) with the parameters and FLOPs
    reported."""
    out = tmp_path / "run"
    proc = _cli(["--model-path", made["path"], "--data", "digits", *flags,
                 "--finetune-epochs", "1", "--candidates", "1", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    cut = {c["unit"] for c in plan["cuts"] if c["removed"]}
    assert cut, plan["cuts"]
    assert report["verify_max_diff"] is not None and report["verify_max_diff"] <= 1e-5
    if reload:
        saved = run_case("tensorflow", "keras3_vit_cases.py", "load", out / "pruned.keras")
        assert (saved["params"], saved["flops"]) == (report["params_after"],
                                                     report["flops_after"])
    return report, plan, cut


@pytest.mark.parametrize("budget", ("flops", "params"))
def test_a_vit_classifier_under_a_target_loses_heads_and_mlp_width(tmp_path, made, budget):
    """Issue 30: FLOPs and parameter budgets cost heads and block widths with the
    channels, so the plan lands within 2 points of the target and cuts both. (Blocks
    with fewer heads and MLP units reload in a fresh process in the ``--ratio`` and
    ``--latency-target`` tests; here one process fewer each.)"""
    report, _, cut = _run_vit(tmp_path, made, f"--{budget}-target", "0.5", reload=False)
    assert {u.rsplit("/", 1)[-1] for u in cut} == {"heads", "mlp_dim"}, cut
    assert abs(1 - report[f"{budget}_after"] / report[f"{budget}_before"] - 0.5) <= 0.02, report


def test_head_widths_through_the_command_line(tmp_path):
    """``--head-dims``: a functional model on Keras's ``MultiHeadAttention`` loses head
    widths with whole heads (at ``--ratio 0.5``, every kind of unit loses half), verifies
    and reloads with the parameters reported; under ``--params-target`` the widths are
    offered to the allocation (its choice is by importance: tests/test_unit_budget.py)."""
    made = run_case("tensorflow", "keras3_vit_cases.py", "make_mha", tmp_path)
    for flags in (["--ratio", "0.5"], ["--params-target", "0.5"]):
        out = tmp_path / flags[0][2:]
        proc = _cli(["--model-path", made["path"], "--data", "digits", *flags, "--head-dims",
                     "--finetune-epochs", "1", "--out", str(out)])
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads((out / "report.json").read_text())
        plan = json.loads((out / "plan.json").read_text())
        widths = [c for c in plan["cuts"] if c["unit"] in ("key_dim", "value_dim")]
        assert len(widths) == 4, plan["cuts"]  # both layers' key and value widths
        assert report["verify_max_diff"] is not None and report["verify_max_diff"] <= 1e-5
        if flags[0] == "--ratio":
            assert all(c["removed"] == c["size"] // 2 for c in widths), widths
    assert abs(1 - report["params_after"] / report["params_before"] - 0.5) <= 0.02, report
    saved = run_case("tensorflow", "keras3_vit_cases.py", "load", out / "pruned.keras")
    assert saved["params"] == report["params_after"]


@pytest.mark.parametrize("flags", (["--params-target", "1.5"],
                                   ["--params-target", "0.5", "--ratio", "0.3"]))
def test_a_bad_params_target_is_one_line(tmp_path, capsys, flags):
    status = pf.main(["--model", "lenet5", "--image-size", "16", *flags, "--quiet",
                      "--no-plots", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "--params-target" in err[0], err


def test_a_plan_that_removes_nothing_stops_with_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    # lenet5 has 226 prunable channels: 0.1 % of them (the default global scope) is none
    status = pf.main(["--model", "lenet5", "--image-size", "16", "--ratio", "0.001",
                      "--baseline-epochs", "1", "--finetune-epochs", "1", "--quiet",
                      "--no-plots", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    assert "removes nothing" in err[0] and "--ratio" in err[0]
    assert not out.exists() or not os.listdir(out)


def test_a_vit_classifier_under_a_latency_target_prices_heads_mlp_width_and_blocks(
        tmp_path, made, monkeypatch):
    """Issue 30: the latency tables time a keras-hub block with fewer heads, MLP units or
    blocks as they time a layer with fewer channels, so all three are offered to one
    allocation, and what it cuts is exact. Which of them it takes follows measured times
    of a few hundred microseconds, whose noise decides between near-equal mixes (seen:
    one block alone, or one block's heads and MLP units), so the mix is not asserted here;
    tests/test_unit_budget.py checks the choice on tables given by hand, and how near the
    measured cut lands is the bench's to show."""
    # tables and checks of this run alone (not those of earlier runs, on other code)
    monkeypatch.setenv("SURGERY_COST_CACHE", str(tmp_path / "cost-cache"))
    _, plan, cut = _run_vit(tmp_path, made, "--latency-target", "0.5",
                            "--latency-batch-size", "32", "--threads", "2", "--depth")
    offered = {c["unit"].rsplit("/", 1)[-1]: c["size"] for c in plan["cuts"]}
    assert offered == {"heads": 4, "mlp_dim": 128, "blocks": 2}, plan["cuts"]
    settings = plan["settings"]
    assert settings["latency_checks"] and settings["latency_reachable"], settings
    # timed, the cut model is faster (seen: 45 % to 63 % less time, for a 50 % target)
    assert settings["latency_removed"] >= 0.2, settings
