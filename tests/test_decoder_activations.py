"""Minitron's ``activation`` criterion in keras-hub's grouped-query decoders (Llama 3,
Mistral, Qwen3, Gemma 3): the decoder rules' NumPy pass reproduces each Keras block's
output (the oracle behind its head and feed-forward scores), a planted dead key/value
group and dead feed-forward units score zero and are exactly what a parameter target
removes first, and no decoder unit falls back to weight scores. Cases in
tests/keras3_decoder_cases.py, in Keras 3 child processes (TensorFlow; the forward oracle
on JAX too), started together."""
import pytest
from keras3_child import finish, start

CASES = ("llama", "mistral", "qwen3", "gemma3")
FORWARD_CASES = CASES + ("gemma3_bidirectional",)


@pytest.fixture(scope="module")
def children(tmp_path_factory):
    out = tmp_path_factory.mktemp("decoders")
    return {"forward": start("tensorflow", "keras3_decoder_cases.py", "forward", out),
            "ranking": start("tensorflow", "keras3_decoder_cases.py", "ranking", out),
            "jax": start("jax", "keras3_decoder_cases.py", "forward", out)}


@pytest.mark.parametrize("case", FORWARD_CASES)
def test_the_numpy_pass_reproduces_the_keras_block(children, case):
    r = finish(children["forward"])[case]
    assert r["blocks"] == 2
    assert r["error"] <= 1e-4, r          # every position, queries without keys included
    assert r["roles"][1].endswith("padding_mask"), r


@pytest.mark.parametrize("case", FORWARD_CASES)
def test_the_numpy_pass_reproduces_the_keras_block_on_jax(children, case):
    """JAX's fused attention differs only where a (padded) query has no key at all."""
    r = finish(children["jax"])[case]
    assert r["keyed"] <= 1e-4, r


@pytest.mark.parametrize("case", CASES)
def test_dead_heads_and_mlp_units_score_lowest(children, case):
    r = finish(children["ranking"])[case]
    scores = r["scores"]
    (group,), (units,) = ([k for k in r["planted"] if k.endswith(a)]
                          for a in ("query_groups", "intermediate_dim"))
    block = group.split(":")[0]
    assert scores[group][0] == 0 and min(scores[group][1:]) > 0, scores[group]
    heads = scores[f"{block}:heads"]     # group 0's two query heads: zero contexts
    assert heads[:2] == [0, 0] and min(heads[2:]) > 0, heads
    mlp = scores[units]
    assert mlp[:8] == [0] * 8 and min(mlp[8:]) > 0, mlp
    hidden = scores.pop("hidden")
    assert [hidden[c] for c in (3, 5)] == [0, 0], hidden
    assert min(v for c, v in enumerate(hidden) if c not in (3, 5)) > 0, hidden
    assert all(min(v) > 0 for k, v in scores.items() if not k.startswith(
        (block + ":heads", group, units))), scores


@pytest.mark.parametrize("case", CASES)
def test_dead_units_are_cut_first_under_a_params_target(children, case):
    r = finish(children["ranking"])[case]
    assert r["removed"] == r["planted"], r
    assert r["deletions"] == {"token_embedding": [3, 5]}, r  # the dead hidden channels
    assert r["verify"] <= 1e-5, r


def test_decoder_units_no_longer_fall_back_to_weight_scores(children):
    report = finish(children["ranking"])
    for case in CASES:
        assert report[case]["warnings"] == [], (case, report[case]["warnings"])
    control = report[CASES[0]]["control"]  # the check sees the fallback when it happens
    assert any("scored with l1" in m for m in control), control
