"""keras-hub causal LMs (``Llama3CausalLM``, ``Qwen3CausalLM``, ``MistralCausalLM``,
``Gemma3CausalLM``; small configs, random weights) cut under ``params_target=0.5`` stay
models of their family: the cut is exact (``verify``), the parameter count is the one
planned (hidden width, heads and MLP width), greedy ``generate`` through the key/value cache picks the tokens that full
forward passes pick, the input model is untouched, and the model quantizes to int8 (and
int4), saves as ``.keras`` and reloads equal in a fresh process after ``import surgery``.
``surgery.distill`` trains the cut model toward the original through ``keras.distillation``
and, SIGKILLed after a round, resumes from its backup to the very model an uninterrupted
run ends with; it runs on JAX (data-parallel over two forced host devices) and PyTorch too.

The cases run in child processes (tests/keras3_lm_cases.py), as in tests/test_keras3_hub.py.
"""

import json
import os
import signal
import subprocess
import sys

import pytest
from keras3_child import HERE, ROOT, finish, keras3_env, run_case, start
from keras3_lm_cases import FAMILIES, PROMPT

CLASSES = {"llama3": "Llama3CausalLM", "qwen3": "Qwen3CausalLM",
           "mistral": "MistralCausalLM", "gemma3": "Gemma3CausalLM"}


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    out = tmp_path_factory.mktemp("keras3_lm")
    cut = run_case("tensorflow", "keras3_lm_cases.py", "cut", out, timeout=900)
    loaded = run_case("tensorflow", "keras3_lm_cases.py", "load", out, timeout=900)
    return cut, loaded


@pytest.mark.parametrize("family", FAMILIES)
def test_causal_lm_cut_in_half_stays_its_family_and_is_exact(lms, family):
    r = lms[0][family]
    assert r["classes"] == [CLASSES[family], CLASSES[family], "PrunedBackbone"]
    before, planned, after = r["params"]
    assert planned == after and 0.45 <= after / before <= 0.55, r["params"]
    assert r["hidden"] > 0 and not r["skipped"]  # the embedding's (hidden) channels too
    assert any(axes.get("heads") for axes in r["units"].values()), r["units"]
    assert all(axes.get("intermediate_dim") for axes in r["units"].values()), r["units"]
    assert r["verify"] <= 1e-5
    assert r["moved"] > 1e-2  # zeroing the cut units changed the logits
    flops, predicted, cut = r["flops_target"]  # hidden channels cost FLOPs in every block
    assert predicted == cut and abs(1 - cut / flops - 0.5) <= 0.02, r["flops_target"]
    assert r["original_unchanged"] == 0.0


@pytest.mark.parametrize("family", FAMILIES)
def test_cut_causal_lm_generates_through_its_cache(lms, family):
    r = lms[0][family]
    assert len(r["generated"]) == len(r["greedy"]) > PROMPT
    assert r["generated"] == r["greedy"]
    assert r["int8_generated"] == len(r["greedy"])


@pytest.mark.parametrize("family", FAMILIES)
def test_cut_causal_lm_quantizes_saves_and_reloads(lms, family):
    r, loaded = lms[0][family], lms[1]
    assert r["int8_layers"] >= 10  # every Dense, EinsumDense and the embedding
    assert 0 < r["int8_error"] < 0.25
    for name in (family, f"{family}_int8"):
        assert loaded[name] == [CLASSES[family], "PrunedBackbone", 0.0], name
    assert 0 < lms[0]["int4_error"]
    assert loaded["llama3_int4"] == ["Llama3CausalLM", "PrunedBackbone", 0.0]


def test_distillation_killed_after_a_round_resumes_to_the_uninterrupted_result(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    killed = start("tensorflow", "keras3_lm_cases.py", "distill", tmp_path / "a", "kill")
    killed.communicate(timeout=900)
    assert killed.returncode in (-signal.SIGKILL, 137)
    assert (tmp_path / "a" / "backup").exists()
    resumed = run_case("tensorflow", "keras3_lm_cases.py", "distill", tmp_path / "a",
                       timeout=900)
    whole = finish(start("tensorflow", "keras3_lm_cases.py", "distill", tmp_path / "b"), 900)
    assert whole["rounds_run"] == 3 and resumed["rounds_run"] == 1  # two rounds restored
    assert resumed["loss"][0] == pytest.approx(whole["loss"][2], rel=1e-5)
    assert resumed["perplexity"] == pytest.approx(whole["perplexity"], rel=1e-5)
    before, after, _ = whole["perplexity"]
    assert abs(after - before) / before > 0.05  # distillation moved the student
    for run in (resumed, whole):
        assert run["teacher_unchanged"] == 0.0 and run["teacher_trainable"]
        assert not run["backup_left"]


@pytest.mark.parametrize("backend,strategy,env", [
    ("jax", "dataparallel", {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}),
    ("torch", "default", {}),
], ids=["jax-dataparallel", "torch"])
def test_distillation_on_other_backends(tmp_path, backend, strategy, env):
    proc = subprocess.run([sys.executable, os.path.join(HERE, "keras3_lm_cases.py"), "distill",
                           str(tmp_path), "", strategy], env={**keras3_env(backend), **env},
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    r = json.loads(lines[-1][len("RESULT "):])
    assert r["backend"] == backend and r["replicas"] == (2 if strategy != "default" else 1)
    before, after, _ = r["perplexity"]
    assert r["rounds_run"] == 3 and abs(after - before) / before > 0.05  # the student moved
    assert r["teacher_unchanged"] == 0.0 and not r["backup_left"]


def test_large_models_verify_call_by_call_as_small_ones_do(tmp_path):
    """Above ``STREAMED_PARAMS`` parameters ``verify`` zeroes and runs the model call by
    call instead of building a zeroed copy (a 1 B-parameter model's copy is 2 GB more);
    forced on small models, it gives the same difference, for a right and a wrong cut."""
    r = run_case("tensorflow", "keras3_lm_cases.py", "streamed", tmp_path, timeout=900)
    for name in ("lm", "cnn"):
        (right, right_streamed), (wrong, wrong_streamed) = r[name]
        assert right <= 1e-5 and abs(right_streamed - right) <= 1e-6, r
        assert wrong > 1e-2 and wrong_streamed == pytest.approx(wrong, rel=1e-5), r


def test_latency_target_on_a_token_sequence_of_any_length_is_refused_in_one_line(lms):
    message = lms[0]["latency_refused"]
    assert "any length" in message and "params_target" in message
    assert len(message.splitlines()) == 1


def test_depth_on_decoder_blocks_plans_them_as_one_group(lms):
    """Both blocks of the Llama 3 LM are planned as units of depth, with no warning (their
    removal is tested in tests/test_decoder_depth.py)."""
    blocks, warnings = lms[0]["depth"]
    assert blocks == ["transformer_layer_0", "transformer_layer_1"] and not warnings


def test_candidates_trade_kinds_of_unit_and_the_least_divergent_wins(tmp_path):
    """``candidates=4`` under ``params_target=0.5`` by activations: every candidate
    reaches the budget, they share it differently between hidden channels, heads and MLP
    units, each one's score is minus the KL divergence of its cut's next-token
    distributions from the original's (recomputed here from the cut model), and the
    highest wins; the winner is an exact cut whose zeroing moved the logits."""
    r = run_case("tensorflow", "keras3_lm_cases.py", "candidates", tmp_path, timeout=900)
    rows = r["candidates"]
    assert len(rows) == 4 and r["chosen_is_seen"]
    assert all(abs(row["params"] - 0.5) <= 0.02 for row in rows), rows
    assert len({json.dumps(row["kept"], sort_keys=True) for row in rows}) >= 3, rows
    for row in rows:
        assert row["score"] < 0 and row["score"] == pytest.approx(row["recomputed"], abs=1e-5)
    scores = [row["score"] for row in rows]
    assert r["chosen"] == scores.index(max(scores)) and len(set(scores)) == 4
    assert r["verify"] <= 1e-5 and r["moved"] > 1e-2
    # where the logits would exceed MAX_OUTPUT_VALUES, the first examples within it are used
    for score, recomputed in r["bounded"]:
        assert score == pytest.approx(recomputed, abs=1e-5)
    assert len(r["bounded"]) == 2


def test_a_cut_gpt2_generates_through_its_task_cache_where_keys_and_values_fit(tmp_path):
    """GPT-2's task caches ``num_heads`` heads of width ``hidden_dim // num_heads`` in
    every block. A ``GPT2CausalLM`` that lost heads generates through it what full forward
    passes pick (each block reads the part it uses), also after a save and reload; one
    whose block kept key and value widths that differ (``head_dims=True``) still scores
    text exactly, and ``apply`` logs that it cannot generate (generate does raise)."""
    r = run_case("tensorflow", "keras3_lm_cases.py", "gpt2", tmp_path, timeout=900)
    heads, widths = r["heads"], r["widths"]
    assert all(h < 4 for h, _, _ in heads["kept"]), heads["kept"]  # heads were cut
    assert heads["verify"] <= 1e-5 and not heads["warnings"]
    assert len(heads["greedy"]) > PROMPT and heads["generated"] == heads["greedy"], heads
    assert heads["reloaded"] == heads["greedy"]
    assert widths["verify"] <= 1e-5
    assert any(k != v for _, k, v in widths["kept"]), widths["kept"]
    assert len(widths["warnings"]) == 1 and "cannot generate" in widths["warnings"][0]
    assert not isinstance(widths["generated"], list), widths["generated"]  # it raised
    # OPT (the same blocks; a token embedding held by the embeddings layer, tied to the
    # logits): an OPTCausalLM that generates, also reloaded (before: a TypeError in apply)
    opt = r["opt"]
    assert opt["class"] == "OPTCausalLM" and opt["verify"] <= 1e-5, opt
    assert opt["generated"] == opt["greedy"] == opt["reloaded"], opt
    assert len(opt["greedy"]) > PROMPT
