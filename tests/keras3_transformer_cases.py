"""Keras 3 transformer cases, run in a child process per backend by
tests/test_transformers.py.

``python tests/keras3_transformer_cases.py DTYPE OUT.json`` imports Keras 3 first
(backend from ``KERAS_BACKEND``), then ``surgery``, and runs
:func:`transformer_models.run_case` for the ViT and the BERT-style encoder in ``DTYPE``
(on JAX and PyTorch, which run eagerly here, heads and head widths together only; Taylor
head scores on every backend). On TensorFlow it also runs the robust-graph cases of
tests/robust_models.py (variable-length token ids, an unknown composite layer) and saves
the pruned ViT as ``.keras`` and reloads it without ``surgery``. It writes the figures as
JSON (or the error, for the parent to report).
"""
import json
import os
import sys
import traceback

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import keras  # noqa: E402  (Keras 3 first: the process has chosen before `surgery`)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import robust_models  # noqa: E402
import transformer_models as tm  # noqa: E402

MODES = ("heads", "both")  # tf-keras runs the Taylor plan too (tests/test_transformers.py)


def main(dtype, out):
    import surgery

    keras.config.set_floatx(dtype)
    keras.utils.set_random_seed(0)
    results = {}
    tensorflow = keras.backend.backend() == "tensorflow"
    for case in tm.BUILDERS:  # eager JAX and PyTorch are slow: one plan each there
        try:
            results[case] = tm.run_case(keras, surgery, case, dtype,
                                        MODES if tensorflow else ("both",))
        except Exception:  # noqa: BLE001 — reported by the parent
            results[case] = {"error": traceback.format_exc()}
    for name in ("token_lstm", "composite") if tensorflow else ():
        try:
            results[name] = robust_models.run(keras, surgery, name)
        except Exception:  # noqa: BLE001 — reported by the parent
            results[name] = {"error": traceback.format_exc()}
    if tensorflow:
        model = tm.vit(keras)
        pruned = surgery.prune(model, ratio=0.5, head_dims=True)
        x = tm.inputs("vit", dtype)
        path = os.path.join(os.path.dirname(out), "vit.keras")
        pruned.save(path)
        loaded = keras.saving.load_model(path)
        results["saved"] = float(np.max(np.abs(tm.to_numpy(loaded(x)) -
                                               tm.to_numpy(pruned(x)))))
    with open(out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
