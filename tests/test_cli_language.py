"""``keras-surgery prune --data <text> --params-target ... --distill --quantize int8`` on a
keras-hub causal LM (tests/keras3_cli_lm_case.py, in a Keras 3 child): one command scores,
cuts, verifies, distils and quantizes, measures every stage, and writes the model, the plan
and the report; a model that is not a language model is refused in one line with exit 2,
and nothing is written."""

import json

from keras3_child import run_case


def test_one_command_cuts_distils_and_quantizes_a_causal_lm(tmp_path):
    r = run_case("tensorflow", "keras3_cli_lm_case.py", tmp_path, timeout=900)
    assert r["status"] == 0
    report = r["report"]
    stages = {row["stage"]: row for row in report["stages"]}
    assert list(stages) == ["original", "cut", "distilled", "int8"]
    assert report["verify"] <= 1e-5
    original, cut = stages["original"], stages["cut"]
    removed = 1 - cut["params"] / original["params"]  # --params-target 0.6: 60 % goes
    assert abs(removed - 0.6) <= 0.02, (cut, original)
    assert cut["flops"] < original["flops"] and stages["int8"]["flops"] == cut["flops"]
    assert stages["distilled"]["perplexity"] != cut["perplexity"]  # distillation trained it
    assert abs(stages["int8"]["perplexity"] / stages["distilled"]["perplexity"] - 1) < 0.1
    for row in stages.values():
        assert row["perplexity"] > 1 and min(row["tokens_per_second"].values()) > 0
    sizes = report["file_bytes"]
    assert sizes["int8"] < sizes["pruned"] < sizes["original"]
    assert r["reloaded"] == ["Llama3CausalLM", cut["params"]]
    assert r["files"] == ["plan.json", "pruned.keras", "pruned_int8.keras", "report.json",
                          "report.md"]
    assert "| distilled |" in r["printed"] and "pruned_int8.keras" in r["printed"]
    assert json.loads(json.dumps(report["plan"]))
    scores = r["candidate_scores"]  # --candidates 8 by default: the least divergent kept
    assert len(scores) == 8 and len(set(scores)) > 1 and max(scores) < 0, scores
    assert r["input_unchanged"]
    status, line = r["refused"]
    assert status == 2 and "not a keras-hub causal LM" in line
    assert len(line.strip().splitlines()) == 1 and not r["no_folder"]
