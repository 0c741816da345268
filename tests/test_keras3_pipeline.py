"""prune_and_finetune.py on Keras 3 (issue 16 items 1-3): model files loaded by the Keras that
wrote them, the whole pipeline on a Keras 3 model, distillation on JAX, one-line errors.

Each run is a child process (the Keras generation and KERAS_BACKEND are fixed per process;
this suite's own process uses tf-keras). tests/keras3_pipeline_cases.py trains the Keras 3
residual CNN and loads the pruned file in plain Keras 3 (no ``surgery``).
"""
import json
import os
import subprocess
import sys

import h5py
import pytest

import surgery  # noqa: F401  (tf-keras in this process)
from surgery.models import lenet5
from surgery._startup import file_keras_generation, keras_generation

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CASES = os.path.join(HERE, "keras3_pipeline_cases.py")
CLI = os.path.join(ROOT, "prune_and_finetune.py")


def _env(backend: str = "tensorflow") -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_ENABLE_ONEDNN_OPTS="0",
               TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_USE_LEGACY_KERAS", None)  # the child decides, as a user's shell would
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    return env


def _run(argv, backend="tensorflow", timeout=600):
    return subprocess.run([sys.executable, *argv], env=_env(backend), capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def _cli(args, backend="tensorflow"):
    return _run([CLI, "--quiet", "--no-plots", *args], backend)


def _report(out):
    with open(os.path.join(out, "report.json")) as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A Keras 3 residual CNN trained on 16x16 digits: model.keras, model3.h5, test.npz."""
    out = str(tmp_path_factory.mktemp("keras3_model"))
    proc = _run([CASES, "make", out])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_start_up_decision_reads_the_writer_of_each_file(trained, tmp_path):
    folder, _ = trained
    k2 = str(tmp_path / "k2.h5")
    lenet5(input_shape=(16, 16, 1)).save(k2, save_format="h5")
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a model")
    assert file_keras_generation(os.path.join(folder, "model.keras")) == 3
    assert file_keras_generation(os.path.join(folder, "model3.h5")) == 3
    assert file_keras_generation(os.path.join(folder, "plain3.h5")) == 3
    assert file_keras_generation(k2) == 2
    assert file_keras_generation(str(garbage)) is None
    assert keras_generation(["--model-path", k2, "--keras", "3"]) == 2  # the file decides
    assert keras_generation(["--keras=3"]) == 3 and keras_generation([]) == 2


def test_keras3_residual_cnn_file_pruned_to_flops_target(trained, tmp_path):
    folder, made = trained
    out = str(tmp_path / "run")
    proc = _cli(["--model-path", os.path.join(folder, "model.keras"), "--flops-target", "0.5",
                 "--finetune-epochs", "8", "--out", out])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = _report(out)
    assert report["keras_generation"] == 3 and report["model_format"] == "keras"
    assert report["acc_baseline"] == pytest.approx(made["accuracy"], abs=1e-9)
    assert report["flops_removed"] >= 0.45, report["flops_removed"]
    assert report["acc_baseline"] - report["acc_finetuned"] <= 0.02, report
    assert report["verify_max_diff"] <= 1e-4
    assert sorted(os.listdir(out)) == ["plan.json", "pruned.keras", "report.json", "report.md"]
    loaded = _run([CASES, "load", os.path.join(out, "pruned.keras"),
                   os.path.join(folder, "test.npz")])
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    plain = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert not plain["surgery_imported"] and plain["class"].startswith("keras.")
    assert plain["accuracy"] == pytest.approx(report["acc_finetuned"], abs=1e-9)
    assert plain["max_diff"] < 1e-5


@pytest.mark.parametrize("writer", [3, 2])
def test_h5_files_are_loaded_by_the_keras_that_wrote_them(trained, tmp_path, writer):
    if writer == 3:
        path = os.path.join(trained[0], "plain3.h5")
    else:
        path = str(tmp_path / "k2.h5")
        lenet5(input_shape=(16, 16, 1)).save(path, save_format="h5")
    out = str(tmp_path / "run")
    proc = _cli(["--model-path", path, "--ratio", "0.3", "--finetune-epochs", "1",
                 "--out", out])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = _report(out)
    assert report["keras_generation"] == writer
    expected = "pruned.keras" if writer == 3 else "pruned.h5"
    assert os.path.isfile(os.path.join(out, expected))
    assert report["params_after"] < report["params_before"]


def test_unloadable_files_give_one_line_naming_format_and_keras(trained, tmp_path):
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a model at all")
    fake3 = str(tmp_path / "fake3.h5")
    with h5py.File(fake3, "w") as f:  # says Keras 3 wrote it, holds no model
        f.attrs["keras_version"] = "3.15.1"
    for path, words in ((str(garbage), ("neither a .keras zip nor an HDF5", "Keras 2")),
                        (fake3, ("HDF5", "Keras 3")),
                        # Keras 3.15 cannot reload its own .h5 of a model with x + y ops
                        (os.path.join(trained[0], "model3.h5"), ("HDF5", "Keras 3", ".keras"))):
        out = str(tmp_path / ("out_" + os.path.basename(path)))
        proc = _cli(["--model-path", path, "--out", out])
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
        assert all(w in lines[0] for w in words), lines[0]
        assert "cannot load" in lines[0] and not os.path.exists(out)


def test_keras3_in_a_keras2_process_is_one_line(tmp_path, capsys):
    from surgery.cli import prune

    out = str(tmp_path / "never")
    assert prune.main(["--keras", "3", "--model", "lenet5", "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Keras 3" in err[0] and "prune_and_finetune.py" in err[0]
    assert not os.path.exists(out)


def test_default_keras3_pipeline_distils_on_jax(tmp_path):
    out = str(tmp_path / "run")
    proc = _cli(["--keras", "3", "--model", "lenet5", "--image-size", "16",
                 "--baseline-epochs", "2", "--finetune-epochs", "1", "--ratio", "0.3",
                 "--distill", "--out", out], backend="jax")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = _report(out)
    assert report["keras_backend"] == "jax" and report["distill"] is True
    assert sorted(f for f in os.listdir(out) if f.endswith(".keras")) == \
        ["baseline.keras", "pruned.keras"]
    assert report["flops_after"] < report["flops_before"]
    assert report["acc_finetuned"] > 0.2  # ten classes: well above chance after distilling
