"""MultiHeadAttention: heads and head widths pruned exactly, on tf-keras (float64, in this
process) and on Keras 3 with the TensorFlow (float64), JAX and PyTorch (float32) backends,
each in its own child process (tests/keras3_transformer_cases.py).

The models (tests/transformer_models.py) are a small ViT (pre-norm) and a BERT-style
encoder over variable-length token ids (post-norm). At ratio 0.5 each attention layer
keeps 2 of 4 heads (and half its key and value width with ``head_dims=True``) and each MLP
half its width; the oracle is the zeroed original, and zeroing must move the outputs.
Taylor head scores must equal the loss change measured by central differences. JAX and
PyTorch (eager here, so slow) run the heads-and-widths plan only; the Keras 3 TensorFlow
child also runs the robust-graph cases (tests/robust_models.py) and reloads a pruned
``.keras`` ViT.
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import surgery
from surgery._backend import keras
from surgery.errors import SurgeryError

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import transformer_models as tm  # noqa: E402

BACKENDS = [(b, d) for b, d, module in (("tensorflow", "float64", "tensorflow"),
                                        ("jax", "float32", "jax"),
                                        ("torch", "float32", "torch"))
            if importlib.util.find_spec(module)]
MODES = ("heads", "both", "taylor")


def check(result, tol, mlp):
    assert "error" not in result, result.get("error")
    for mode in [m for m in MODES if m in result]:
        r = result[mode]
        assert r["verify"] <= tol, (mode, r["verify"])
        assert r["moved"] > 1e-2, (mode, r["moved"])
        assert r["heads"] == [2, 2], (mode, r["heads"])
        assert all(len(r["deletions"][f"{mlp}{i}_up"]) == tm.MLP // 2 for i in range(2))
        assert r["params"][1] < r["params"][0] and r["flops"][1] < r["flops"][0]
    both = result["both"]["units"]["mha0"]
    assert len(both["key_dim"]) == len(both["value_dim"]) == tm.KEY_DIM // 2
    if "heads" in result:
        assert "key_dim" not in result["heads"]["units"]["mha0"]
        assert "mha0:heads" in result["heads"]["summary"]
    row = next(l for l in result["both"]["summary"].splitlines() if l.startswith("mha1:key_dim"))
    assert row.split()[2:4] == [str(tm.KEY_DIM), str(tm.KEY_DIM // 2)]
    rtol = 1e-6 if tol <= 1e-8 else 5e-3
    np.testing.assert_allclose(result["taylor_scores"], result["taylor_differences"],
                               rtol=rtol, atol=rtol * max(result["taylor_differences"]))


@pytest.fixture(scope="module")
def keras2_float64():
    old = keras.backend.floatx()
    keras.backend.set_floatx("float64")
    try:
        import tensorflow as tf
        tf.random.set_seed(0)
        yield
    finally:
        keras.backend.set_floatx(old)


@pytest.mark.parametrize("case", tuple(tm.BUILDERS))
def test_tf_keras_transformer_prunes_heads_exactly(keras2_float64, case):
    check(tm.run_case(keras, surgery, case, "float64"), 1e-8,
          "mlp" if case == "vit" else "ffn")


def test_tf_keras_magnitude_scores_a_head_as_a_unit(keras2_float64):
    model = tm.vit(keras)
    mha = model.get_layer("mha1")
    weights = mha.get_weights()
    for i in (0, 2, 4):  # query, key, value kernels: head 2 only small
        weights[i][:, 2, :] *= 1e-3
    weights[6][2] *= 1e-3  # its output rows
    mha.set_weights(weights)
    p = surgery.plan(model, ratio=0.25, criterion="l2")
    assert p.units["mha1"]["heads"] == [2]


def test_key_width_cut_without_the_scale_fold_is_caught(keras2_float64, monkeypatch):
    """The oracle sees a key_dim cut that forgets to fold the old scale into the query."""
    from surgery.engine.rules import attention

    model, x = tm.vit(keras), tm.inputs("vit", "float64")
    p = surgery.plan(model, ratio=0.5, heads=False, head_dims=True)
    assert surgery.verify(model, surgery.apply(model, p), p, x) <= 1e-8
    monkeypatch.setattr(attention, "folded_scale", lambda *args: 1.0)
    assert surgery.verify(model, surgery.apply(model, p), p, x) > 1e-3


def test_wrong_heads_are_caught_and_bad_units_refused(keras2_float64):
    model, x = tm.vit(keras), tm.inputs("vit", "float64")
    p = surgery.plan(model, ratio=0.5, head_dims=False)
    other = surgery.PrunePlan.from_json(p.to_json())
    assert other.units == p.units
    units = {**p.units, "mha0": {**p.units["mha0"], "heads": sorted(
        set(range(4)) - set(p.units["mha0"]["heads"]))}}
    other = surgery.PrunePlan.from_deletions(p.deletions, p.groups, units=units)
    assert surgery.verify(model, surgery.apply(model, other), p, x) > 1e-3
    units["mha0"]["heads"] = [0, 1, 2, 3]
    other = surgery.PrunePlan.from_deletions(p.deletions, p.groups, units=units)
    with pytest.raises(SurgeryError, match="keep at least one"):
        surgery.apply(model, other)
    with pytest.raises(SurgeryError, match="heads must be True or False"):
        surgery.plan(model, heads="yes")


@pytest.fixture(scope="module", params=BACKENDS, ids=[b for b, _ in BACKENDS])
def keras3(request, tmp_path_factory):
    backend, dtype = request.param
    out = tmp_path_factory.mktemp(f"transformers_{backend}") / "results.json"
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["KERAS_BACKEND"] = backend
    proc = subprocess.run([sys.executable, os.path.join(HERE, "keras3_transformer_cases.py"),
                           dtype, str(out)], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0 and out.exists(), proc.stderr[-3000:]
    return backend, dtype, json.loads(out.read_text())


@pytest.mark.parametrize("case", tuple(tm.BUILDERS))
def test_keras3_transformer_prunes_heads_exactly(keras3, case):
    backend, dtype, results = keras3
    check(results[case], 1e-8 if dtype == "float64" else 1e-5,
          "mlp" if case == "vit" else "ffn")


def test_keras3_robust_graphs(keras3):
    backend, dtype, results = keras3
    if backend != "tensorflow":
        pytest.skip("run on the TensorFlow backend only")
    r = results["token_lstm"]
    assert "error" not in r, r.get("error")
    assert r["verify"] <= 1e-5 and r["moved"] > 1e-2, r
    assert r["params"][1] < r["params"][0]
    assert r["deletions"] == ["dense", "emb", "lstm"]
    composite = results["composite"]
    assert "error" not in composite, composite.get("error")
    assert "'block' (Block) cannot be rebuilt from its config" in composite["refused"]
    assert composite["unchanged"] and "block" in composite["skipped"]
    assert results["saved"] == 0.0
