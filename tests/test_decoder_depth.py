"""Depth for decoder blocks that are layers of their own (issue 30): in keras-hub's Llama 3,
Qwen3, Mistral, Gemma 3 and GPT-2 causal LMs (4 blocks, random weights), a block whose
residual branches end in zeros is the identity, so removing it (it becomes a
``SkippedBlock``) must not move the logits, while the zeroing did; a planted dead block is
what ``plan(params_target=<its share>, depth=True)`` removes, by weight norm and by
activations; the model without it generates through its key/value cache exactly as full
forward passes do, saves, and reloads in a fresh process. BERT's post-norm blocks are no
units of depth; BERT's and GPT-2's blocks are scored by activations through a NumPy pass
that reproduces them. Cases in tests/keras3_decoder_depth_cases.py, in Keras 3 child processes
(keras-hub has no tf-keras form)."""
import pytest
from keras3_child import run_case
from keras3_decoder_depth_cases import FAMILIES


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("decoder_depth")
    cut = run_case("tensorflow", "keras3_decoder_depth_cases.py", "cut", out, timeout=900)
    loaded = run_case("tensorflow", "keras3_decoder_depth_cases.py", "load", out,
                      timeout=600)
    return cut, loaded


@pytest.mark.parametrize("family", FAMILIES)
def test_a_decoder_block_with_zero_branches_is_removed_exactly(report, family):
    r = report[0][family]["oracle"]
    assert r["skipped"] == "SkippedBlock"
    assert r["verify"] <= 1e-6
    assert r["moved"] > 1e-2          # zeroing the block's branch ends moved the logits
    assert r["wrong_block"] > 1e-2    # removing another block instead is caught
    assert r["params"][1] < r["params"][0]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("criterion", ["l2", "activation"])
def test_a_dead_decoder_block_goes_first_under_a_params_target(report, family, criterion):
    r = report[0][family]["ranking"]
    plan = r[criterion]
    assert plan["removed"] == {r["dead"]: {"heads": [], "intermediate_dim": [],
                                           "blocks": [0]}}, plan
    assert plan["deletions"] == {}
    assert plan["predicted"] == r["counted"]
    assert not plan["by_weights"]  # by activations: every unit scored from data


@pytest.mark.parametrize("family", FAMILIES)
def test_a_model_without_a_decoder_block_generates_and_reloads(report, family):
    r = report[0][family]["ranking"]
    assert r["verify"] <= 1e-6
    assert len(r["generated"]) > 4 and r["generated"] == r["greedy"]
    assert report[1][family] == pytest.approx(0.0, abs=1e-6)


def test_post_norm_blocks_are_no_units_of_depth(report):
    r = report[0]["post_norm"]
    assert len(r["said"]) == 1 and "post-norm" in r["said"][0], r
    assert r["blocks"] == [] and r["heads"] > 0


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_bert_and_gpt2_blocks_are_scored_by_a_numpy_pass_that_matches_keras(report, name):
    r = report[0]["passes"][name]
    assert r["error"] <= 1e-4, r
    assert not r["by_weights"], r


def test_latency_target_with_decoder_depth_is_refused_in_one_line(report):
    message = report[0]["latency_refused"]
    assert "depth=True" in message and "params_target" in message, message
    assert len(message.splitlines()) == 1
