"""Child process of tests/test_keras3_train.py: sparse training with train.py on Keras 3.

Run as ``python keras3_train_cases.py OUT [OTHER.keras OTHER_PREDICTIONS.npy]`` with
``KERAS_BACKEND`` set and ``TF_USE_LEGACY_KERAS`` unset. It imports Keras 3 before anything
of ``surgery``, so the process is a Keras 3 process, and prints one ``RESULT {json}`` line:

* ``load``: with another child's ``.keras`` file (written on another backend, carrying the
  surgery regularisers): the error plain Keras 3 gives before ``surgery`` is imported, then
  the largest difference from that child's predictions once
  ``surgery.pipeline.regularizers`` is imported, and the loaded regularisers' classes;
* ``reference``: each Keras 3 penalty's value minus a NumPy reference on random kernels;
* ``plain`` / ``sparse``: ``train.main`` on lenet5 / digits 16 px for 1 epoch without and
  with a strong ``--gl-filter``; per run the exit status, the file names written, the share
  of hidden conv/dense filters whose L2 norm is under 0.1, the sum of those norms, and
  (sparse run)
  ``sum(model.losses)`` of the reloaded model minus the NumPy group lasso of its kernels;
* ``restore``: ``--restore`` of the plain run's ``.keras`` for one more epoch;
* ``tfmot``: exit status, stderr and files of a ``--prune-schedule`` run.
"""
import contextlib
import io
import json
import os
import sys

import keras  # first: this is a Keras 3 process
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TINY = ["--model", "lenet5", "--data", "digits", "--image-size", "16", "--epochs", "1",
        "--batch-size", "32", "--seed", "1"]
GL = 0.05  # strong: lenet5's conv filters have norms around 1


def _load_other(path, predictions):
    probe = np.linspace(0, 1, 2 * 16 * 16, dtype="float32").reshape(2, 16, 16, 1)
    try:
        keras.models.load_model(path)
        before = "loaded"
    except Exception as exc:  # unknown class surgery>CombinedRegularizer
        before = f"{type(exc).__name__}: {exc}"[:4000]
    import surgery.pipeline.regularizers  # noqa: F401  (registers the Keras 3 classes)

    model = keras.models.load_model(path)
    diff = float(np.max(np.abs(model.predict(probe, verbose=0) - np.load(predictions))))
    regs = set()
    for layer in model.layers:
        reg = getattr(layer, "kernel_regularizer", None)
        for r in [reg] + list(getattr(reg, "regularizers", [])):
            if r is not None:
                regs.add(type(r).__module__ + "." + type(r).__name__)
    return {"before_surgery_import": before, "max_diff": diff, "regularizers": sorted(regs)}


def _np_group_lasso(w, axis):
    w = np.asarray(w, np.float64)
    if axis == "filter":
        rows = np.moveaxis(w, -1, 0).reshape(w.shape[-1], -1)
    else:
        rows = np.moveaxis(w, -2, 0).reshape(w.shape[-2], -1)
    return np.sqrt((rows ** 2).sum(axis=1)).sum()


def _np_angular(w, axis):
    w = np.asarray(w, np.float64)
    rows = (np.moveaxis(w, -1, 0).reshape(w.shape[-1], -1) if axis == "filter"
            else np.moveaxis(w, -2, 0).reshape(w.shape[-2], -1))
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    cos = unit @ unit.T
    return ((cos ** 2).sum() - (np.diag(cos) ** 2).sum()) / 2


def _reference():
    from surgery.pipeline import regularizers3 as r3

    rng = np.random.default_rng(0)
    out = {}
    for shape in ((3, 3, 4, 8), (10, 6)):
        w = keras.Variable(rng.normal(size=shape).astype("float32"))
        for axis in ("filter", "channel", "all"):
            want = sum(_np_group_lasso(w.numpy(), a)
                       for a in (("filter", "channel") if axis == "all" else (axis,)))
            got = float(keras.ops.convert_to_numpy(r3.GroupLasso(0.3, axis)(w)))
            out[f"gl_{axis}_{shape}"] = abs(got - 0.3 * want) / (0.3 * want)
        for axis in ("filter", "channel"):
            want = _np_angular(w.numpy(), axis)
            got = float(keras.ops.convert_to_numpy(r3.AngularDissimilarity(0.2, axis)(w)))
            out[f"angular_{axis}_{shape}"] = abs(got - 0.2 * want) / (0.2 * want)
    return out


def _filter_norms(model):
    """L2 norms of the filters of the hidden conv and dense layers."""
    return np.concatenate([_np_group_lasso_rows(layer.kernel.numpy())
                           for layer in model.layers
                           if type(layer).__name__ in ("Conv2D", "Dense")
                           and layer.name != "predictions"])


def _np_group_lasso_rows(w):
    return np.sqrt((np.moveaxis(w, -1, 0).reshape(w.shape[-1], -1) ** 2).sum(axis=1))


def _train(argv):
    from surgery.cli import train

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = train.main(argv)
    return rc, err.getvalue()


def _run(out, name, extra):
    folder = os.path.join(out, name)
    rc, err = _train(TINY + extra + ["--out", folder])
    result = {"rc": rc, "stderr": err[-2000:],
              "files": sorted(os.listdir(folder)) if os.path.isdir(folder) else []}
    if rc == 0:
        model = keras.models.load_model(os.path.join(folder, "lenet5.keras"))
        norms = _filter_norms(model)
        result["small_filter_share"] = float((norms < 0.1).mean())
        result["filter_norm_sum"] = float(norms.sum())
        result["type"] = type(model).__module__
        if extra:
            want = sum(GL * _np_group_lasso(layer.kernel.numpy(), "filter")
                       for layer in model.layers if type(layer).__name__ in ("Conv2D", "Dense"))
            got = float(sum(keras.ops.convert_to_numpy(l) for l in model.losses))
            result["losses_vs_numpy"] = abs(got - want) / want
        probe = np.linspace(0, 1, 2 * 16 * 16, dtype="float32").reshape(2, 16, 16, 1)
        np.save(os.path.join(out, f"{name}_predictions.npy"), model.predict(probe, verbose=0))
    return result


def main(out, other=None, predictions=None):
    report = {"backend": keras.backend.backend()}
    if other:
        report["load"] = _load_other(other, predictions)
    report["reference"] = _reference()
    report["plain"] = _run(out, "plain", [])
    report["sparse"] = _run(out, "sparse", ["--gl-filter", str(GL)])
    folder = os.path.join(out, "restore")
    rc, err = _train(["--restore", os.path.join(out, "plain", "lenet5.keras"), "--epochs", "1",
                      "--optimizer", "adam", "--warmup-epochs", "0.5", "--out", folder])
    report["restore"] = {"rc": rc, "stderr": err[-2000:],
                         "files": sorted(os.listdir(folder)) if os.path.isdir(folder) else []}
    folder = os.path.join(out, "tfmot")
    rc, err = _train(TINY + ["--prune-schedule", "constant", "--out", folder])
    report["tfmot"] = {"rc": rc, "stderr": err, "exists": os.path.exists(folder)}
    print("RESULT " + json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:])
