"""Transformer blocks in Keras 3 (TensorFlow backend): the residual (hidden) width pruned
exactly across RMS normalisation (Keras's ``RMSNormalization`` in float64; keras-hub's
``LlamaLayerNorm`` and Gemma's ``RMSNormalization``, which compute in float32), through
``EinsumDense`` projections read from their equations, saved as ``.keras`` and loaded back
in a fresh process after only ``import surgery``; and mean-centred ``LayerNormalization``,
which blocks the residual width unless ``plan(..., exact=False)``, whose plan reports the
layers it approximates and how far they moved the outputs; and keras-hub 0.32 backbones
(``ViTBackbone``, ``BertBackbone``, ``LlamaBackbone`` with grouped-query attention; small
configs, random weights) whose composite blocks
lose half their heads and feed-forward width exactly, are rebuilt as surgery's registered
equivalents, and reload in a fresh process.

The cases run in child processes (tests/keras3_hub_cases.py), as in tests/test_keras3.py.
"""

import pytest
from keras3_child import run_case

TOLERANCE = {"llama_block": 1e-8, "hub_norms": 1e-5}


def _child(mode, out):
    return run_case("tensorflow", "keras3_hub_cases.py", mode, out, timeout=900)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    out = tmp_path_factory.mktemp("keras3_hub")
    return out, _child("prune", out)


@pytest.mark.parametrize("case", sorted(TOLERANCE))
def test_hidden_width_is_exact_across_rms_norms(pruned, case):
    r = pruned[1][case]
    # the residual group (embed, attention output, FFN down) and the FFN width lose half
    assert r["deleted"] == {"embed": 8, "attn_o": 8, "down": 8, "gate": 16, "up": 16}
    assert r["verify"] <= TOLERANCE[case]
    assert r["moved"] > 1e-2                      # zeroing changed the outputs
    assert r["verify_wrong_channels"] > 1e-2      # the oracle sees a wrong cut
    assert r["epsilon"] == [0.001, 0.002]        # epsilon scaled by d / d'
    assert r["params"][1] < r["params"][0] and r["flops"][1] < r["flops"][0]


@pytest.mark.parametrize("case,axes", [
    ("vit", ("vit_encoder:transformer_block_1/heads", "vit_encoder:transformer_block_1/mlp_dim",
             "vit_encoder:transformer_block_2/heads", "vit_encoder:transformer_block_2/mlp_dim")),
    ("deit", ("deit_encoder:transformer_block_1/heads", "deit_encoder:transformer_block_1/mlp_dim",
              "deit_encoder:transformer_block_2/heads",
              "deit_encoder:transformer_block_2/mlp_dim")),
    ("bert", ("transformer_layer_0:heads", "transformer_layer_0:intermediate_dim",
              "transformer_layer_1:heads", "transformer_layer_1:intermediate_dim")),
    ("llama", ("transformer_layer_0:heads", "transformer_layer_0:intermediate_dim",
               "transformer_layer_1:heads", "transformer_layer_1:intermediate_dim")),
    ("mistral", ("transformer_layer_0:heads", "transformer_layer_0:intermediate_dim",
                 "transformer_layer_1:heads", "transformer_layer_1:intermediate_dim")),
    ("gemma3", ("decoder_block_0:heads", "decoder_block_0:intermediate_dim",
                "decoder_block_1:heads", "decoder_block_1:intermediate_dim")),
    ("gpt2", ("transformer_layer_0:heads", "transformer_layer_0:intermediate_dim",
              "transformer_layer_1:heads", "transformer_layer_1:intermediate_dim")),
    ("qwen3", ("transformer_layer_0:heads", "transformer_layer_0:intermediate_dim",
               "transformer_layer_1:heads", "transformer_layer_1:intermediate_dim")),
])
def test_keras_hub_backbones_lose_half_their_heads_and_mlp_width_exactly(pruned, case, axes):
    r = pruned[1][case]
    assert r["units"] == {a: 2 if a.endswith("heads") else 16 for a in axes}
    assert r["verify"] <= 1e-5
    assert r["moved"] > 1e-2 and r["verify_wrong_heads"] > 1e-3
    assert r["params"][1] < r["params"][0] and r["flops"][1] < r["flops"][0]
    assert "heads" in r["summary"] and " 4 " in r["summary"]
    if case in ("llama", "mistral", "qwen3", "gemma3"):  # 2 key/value heads serve query heads 0-1 and 2-3
        for axes in r["heads"].values():
            assert sorted(h // 2 for h in axes["heads"]) == [0, 1]
    predicted, measured = r["params_target"]   # params_target=0.5: exact, within 2 points
    assert predicted == measured and abs(1 - measured / r["params"][0] - 0.5) <= 0.02, r
    assert r["params_target_verify"] <= 1e-5


@pytest.mark.parametrize("case", ("vit", "deit", "bert", "gpt2"))
def test_keras_hub_blocks_lose_head_widths_under_a_flops_target(pruned, case):
    """``head_dims=True``: each block's key and value widths are offered with its heads
    (ViT and DeiT encoders hold every block in one layer: ``"<block>/key_dim"``); the plan
    under ``flops_target=0.5`` cuts some, its FLOPs are exactly the cut model's, within 2
    points of the target, and the cut model matches the zeroed original."""
    r = pruned[1][f"{case}_head_dims"]
    assert r["widths"], r
    before, predicted, measured = r["flops"]
    assert predicted == measured and abs(1 - measured / before - 0.5) <= 0.02, r
    assert r["verify"] <= 1e-5 and r["moved"] > 1e-2, r


@pytest.mark.parametrize("case", ("bert", "gpt2"))
def test_keras_hub_block_head_widths_scored_by_activation(pruned, case):
    """A key channel with zero query weights adds nothing to the logits: activations
    (on the block's NumPy pass, padding-aware) cut it first; weight norms keep it (its key
    weights are ten times the rest)."""
    r = pruned[1][f"{case}_width_activations"]
    assert r["activation"] == [1], r
    assert r["l2"] and r["l2"] != [1], r


def test_pruned_models_reload_in_a_fresh_process(pruned):
    report = _child("load", pruned[0])
    hub = ["vit", "deit", "bert", "llama", "mistral", "qwen3", "gemma3", "gpt2"]
    widths = [f"{b}_head_dims" for b in ("vit", "deit", "bert", "gpt2")]
    for case in list(TOLERANCE) + hub + [f"{b}_params" for b in hub] + widths:
        assert report[case] == pytest.approx(0.0, abs=1e-6), case
    # blocks whose widths the stock config cannot express load as surgery's equivalents
    assert "surgery.ViTEncoder" in report["vit_classes"]
    assert "surgery.TransformerEncoder" in report["bert_classes"]
    assert "surgery.LlamaTransformerDecoder" in report["llama_classes"]


def test_layernorm_blocks_unless_exact_false_which_reports_its_deviation(pruned):
    r = pruned[1]["layernorm"]
    assert r["exact_deleted"] == ["fc"]
    assert "plan(..., exact=False)" in r["exact_skipped"]["embed"]
    assert r["loose_deleted"] == ["embed", "fc", "mix"]
    assert r["settings"]["exact"] is False and r["json_roundtrip"] is False
    assert r["settings"]["approximate"] == ["ln1", "ln2"]
    assert r["settings"]["deviation"] == pytest.approx(r["verify"], rel=1e-9)
    assert r["settings"]["deviation"] > 1e-3      # mean-centring is not exact: it says so
    assert r["shapes"] == [8, 8]


def test_keras_hub_tasks_and_shared_blocks_are_cut_exactly_or_refused(tmp_path):
    """``apply`` on a ``BertTextClassifier`` or ``ViTImageClassifier`` returns that class
    (rebuilt from the task's config: ``num_classes`` and the rest), its head holding the
    original's weights: the cut is exact against the zeroed original, reloads, and leaves
    the input model as it was (before: a TypeError, the task rebuilt without
    ``num_classes``); a task's own head keeps its widths (DistilBERT's ``pooled_dense``),
    so the task can be rebuilt; a task whose config cannot rebuild it comes back
    functional, with a warning. ALBERT's one block, called for every layer, is cut exactly; a layer that
    reads another's weight (``BertMaskedLM``'s head) is refused in one line."""
    r = _child("tasks", tmp_path)
    for case, cls in (("bert", "BertTextClassifier"), ("vit", "ViTImageClassifier"),
                      ("distilbert", "DistilBertTextClassifier")):
        c = r[case]
        assert c["class"] == cls, c
        assert c["verify"] <= 1e-5 and c["moved"] > 1e-2, c
        assert c["reloaded"] <= 1e-6 and c["original_unchanged"] == 0.0, c
        assert c["params"][1] < 0.8 * c["params"][0], c
    # DistilBERT's head keeps its hidden-width Dense (pruned, the task could not rebuild it)
    assert "ignored" in r["distilbert"]["skipped"].get("pooled_dense", ""), r["distilbert"]
    # a task whose config cannot rebuild it: the cut, as a functional model, and a warning
    c = r["unbuildable"]
    assert c["class"] == "Functional" and c["verify"] <= 1e-5, c
    assert len(c["warnings"]) == 1 and "cannot be rebuilt" in c["warnings"][0], c
    # ALBERT's one block, called for both layers, loses heads and MLP units exactly (before:
    # the cut backbone's sequence output was the first call's, 8e-3 away)
    c = r["albert"]
    assert list(c["units"]) == ["group_0_inner_layer_0"], c
    assert c["verify"] <= 1e-5 and c["moved"] > 1e-2, c
    # a layer reading another's weight (BertMaskedLM's head, the token embedding): refused
    message = r["masked_lm"]
    assert "'mlm_head'" in message and "token_embedding" in message, message
    assert "task.backbone" in message and len(message.splitlines()) == 1
