"""Attention-free ViT blocks (issue 30): a keras-hub ViT block may lose all its heads
(FLAP's global ranking empties whole attention layers), and then adds only its
attention's output bias. The zeroing oracle holds for it (every head's value weights
zero), the cut model reloads in a fresh process and runs in ONNX Runtime, the parameter
estimator counts it exactly, and a block whose heads are all dead is what a budget
empties first. Cases in tests/keras3_attention_free_cases.py, in a Keras 3 child
process (keras-hub has no tf-keras form)."""
import pytest
from keras3_child import run_case


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("attention_free")
    result = run_case("tensorflow", "keras3_attention_free_cases.py", "run", out, timeout=900)
    result["load"] = run_case("tensorflow", "keras3_attention_free_cases.py", "load", out)
    return result


def test_a_block_without_heads_is_cut_exactly(report):
    r = report["oracle"]
    assert r["blocks"] == [4, 0, 4]
    assert r["verify"] <= 1e-6
    assert r["moved"] > 1e-2              # zeroing block 2's heads moved the outputs
    assert r["wrong"] > 1e-2              # emptying block 1 instead is caught
    before, after, predicted = r["params"]
    assert after < before and predicted == after
    assert r["flops"][1] < r["flops"][0]


def test_an_attention_free_block_reloads_in_a_fresh_process(report):
    assert report["load"]["blocks"] == [4, 0, 4]
    assert report["load"]["reloaded"] == pytest.approx(0.0, abs=1e-6)


def test_an_attention_free_block_runs_in_onnx_runtime(report):
    assert report["onnx"] <= 1e-4


@pytest.mark.parametrize("criterion", ("l1", "activation"))
def test_a_budget_empties_the_block_whose_heads_are_dead(report, criterion):
    assert report["ranking"][criterion] == {
        "vit_encoder:transformer_block_3/heads": [0, 1, 2, 3]}, report["ranking"]


def test_latency_tables_time_a_block_without_its_attention(report):
    assert report["micro"]["grid"][-1] == 0
    assert report["micro"]["blocks_and_attention"] == {"4": [1, 1], "0": [1, 0]}


def test_identical_blocks_share_one_micro_model(report):
    """Timed alone, two identical blocks of an encoder are one micro-model, measured once:
    their tables agree, so timing noise cannot rank one block's heads above another's."""
    assert report["micro"]["shared"] == [True, False]
