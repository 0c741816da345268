"""Depth (issue 30): a keras-hub ViT block whose residual branches are zero is the
identity, so removing it must not move the outputs (the zeroing oracle, extended to
blocks); and a plan under ``params_target`` with ``depth=True`` ranks blocks, heads and
MLP units together, so a planted dead block, dead head and dead MLP units are exactly
what it removes first. Cases in tests/keras3_depth_cases.py, in a Keras 3 child process
(keras-hub has no tf-keras form)."""
import pytest
from keras3_child import run_case


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return run_case("tensorflow", "keras3_depth_cases.py", "run",
                    tmp_path_factory.mktemp("depth"), timeout=900)


def test_a_block_with_zero_branches_is_removed_exactly(report):
    r = report["oracle"]
    assert r["blocks"] == 2
    assert r["verify"] <= 1e-6
    assert r["moved"] > 1e-2              # zeroing the block's branches moved the outputs
    assert r["wrong_block"] > 1e-2        # removing another block is caught
    assert r["params"][1] < r["params"][0] and r["flops"][1] < r["flops"][0]


def test_dead_block_head_and_mlp_units_go_first_under_a_params_target(report):
    r = report["ranking"]
    assert r["removed"] == r["planted"], r
    assert r["removed_by_activation"] == r["planted"], r
    assert report["activation_check"] <= 1e-4
    assert r["predicted"] == r["measured"]
    assert r["verify"] <= 1e-6


def test_a_model_without_a_block_reloads(report):
    assert report["reloaded"] == pytest.approx(0.0, abs=1e-6)


def test_a_keras_hub_vit_exports_to_onnx_runtime(report):
    """keras-hub's exact GELU converts to an ``Erfc`` node no ONNX opset has, and its
    position ids to an extra graph input: the exported file runs, and agrees."""
    assert report["onnx"] <= 1e-4


@pytest.mark.parametrize("criterion", ("l1", "activation"))
def test_dead_hidden_channels_across_rms_norms_go_first(report, criterion):
    r = report["hidden"]
    assert r[criterion] == r["planted"], r


@pytest.mark.parametrize("case", ("llama", "mistral", "qwen3", "gemma3"))
def test_grouped_query_attention_loses_whole_key_value_groups(report, case):
    r = report["query_groups"][case]
    assert r["groups"] and all(len(v) == 1 for k, v in r["groups"].items()
                               if k.endswith("query_groups")), r
    assert r["verify"] <= 1e-5
    assert r["moved"] > 1e-2 and r["wrong_group"] > 1e-3
    predicted, measured, before = r["budget"]
    assert predicted == measured and abs(1 - measured / before - 0.4) <= 0.02, r
    assert r["budget_verify"] <= 1e-5
    assert r["reloaded"] <= 1e-5


def test_keras_hub_mlp_units_means_fold_into_the_next_bias(report):
    r = report["compensation"]
    assert r["folded"] == [f"transformer_block_{b}/mlp_dim" for b in (1, 2, 3)]
    assert all(k.endswith("heads") for k in r["skipped"]) and len(r["skipped"]) == 3
    assert r["verify"] <= 1e-5          # against the compensated zeroed original
    assert r["moved"] > 1e-3            # compensation changed the cut model


def test_a_latency_plan_removes_blocks_as_their_table_prices_them(report):
    """Under ``latency_target``, a block is priced by the ``"blocks"`` table as heads and
    MLP units by theirs: tables that save time only by blocks give a plan of one block,
    and a flat blocks table (a block saves nothing) a plan of heads and MLP units alone.
    (The command line's measured tables: tests/test_cli_cuts.py.)"""
    r = report["latency_tables"]
    assert r["blocks_priced"]["removed"] == {"blocks": 1}, r
    flat = r["blocks_flat"]["removed"]
    assert flat and "blocks" not in flat, r
    assert r["blocks_priced"]["predicted"] == pytest.approx(1 / 3, abs=1e-4)
    assert abs(r["blocks_flat"]["predicted"] - 0.33) <= 0.02, r
    for case in r.values():
        assert case["verify"] <= 1e-5 and case["moved"] > 1e-2, r


def test_keras_hub_head_widths_scored_by_activation(report):
    """The ViT encoder's head widths get the attention rule's activations: a key channel
    with zero query weights adds nothing to the logits and goes first; weight norms keep
    it (its key weights are ten times the rest)."""
    r = report["width_activations"]
    assert r["activation"] == [1], r
    assert r["l2"] and r["l2"] != [1], r
