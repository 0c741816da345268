"""train.py on Keras 3 (issue 16 item 4): sparse training with the penalties as Keras 3
regularisers on the TensorFlow and JAX backends, ``.keras`` files that carry them and reload
on another backend once surgery is imported, ``--restore`` of a ``.keras`` file, and the
one-line refusal of the tfmot options.

Keras 3 runs in child processes (tests/keras3_train_cases.py): ``KERAS_BACKEND`` is read
once at import and this suite's process uses tf-keras. The TensorFlow child runs first; the
JAX child loads its ``.keras`` file before and after importing surgery.
"""
import os
import subprocess
import sys

import pytest
from keras3_child import run_case

HERE = os.path.dirname(os.path.abspath(__file__))
BACKENDS = ("tensorflow", "jax")


def _child(backend, *args):
    return run_case(backend, "keras3_train_cases.py", *args)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    tf_out = tmp_path_factory.mktemp("keras3_train_tf")
    result = {"tensorflow": _child("tensorflow", tf_out)}
    jax_out = tmp_path_factory.mktemp("keras3_train_jax")
    result["jax"] = _child("jax", jax_out, tf_out / "sparse" / "lenet5.keras",
                           tf_out / "sparse_predictions.npy")
    return result


@pytest.mark.parametrize("backend", BACKENDS)
def test_penalties_equal_numpy_reference(reports, backend):
    report = reports[backend]
    assert report["backend"] == backend
    assert report["reference"] and max(report["reference"].values()) < 1e-5, report["reference"]
    assert report["sparse"]["losses_vs_numpy"] < 1e-5, report["sparse"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_group_lasso_training_drives_filters_toward_zero(reports, backend):
    plain, sparse = reports[backend]["plain"], reports[backend]["sparse"]
    for run in (plain, sparse):
        assert run["rc"] == 0, run["stderr"]
        assert run["type"].startswith("keras.src.models"), run
        assert "lenet5.keras" in run["files"] and "train_log.csv" in run["files"]
    assert plain["small_filter_share"] <= 0.05, plain
    assert sparse["small_filter_share"] >= 0.25, (plain, sparse)
    assert sparse["filter_norm_sum"] <= 0.6 * plain["filter_norm_sum"], (plain, sparse)


def test_keras_file_with_penalties_reloads_on_another_backend_once_surgery_is_imported(reports):
    load = reports["jax"]["load"]
    assert load["before_surgery_import"].startswith("TypeError"), load
    assert "surgery>GroupLasso" in load["before_surgery_import"], load
    assert load["max_diff"] < 1e-5, load
    assert "surgery.pipeline.regularizers3.GroupLasso" in load["regularizers"], load


@pytest.mark.parametrize("backend", BACKENDS)
def test_restore_continues_a_keras_file(reports, backend):
    run = reports[backend]["restore"]
    assert run["rc"] == 0, run["stderr"]
    assert "lenet5_continued.keras" in run["files"], run


@pytest.mark.parametrize("backend", BACKENDS)
def test_tfmot_options_are_refused_in_one_line(reports, backend):
    run = reports[backend]["tfmot"]
    assert run["rc"] == 2
    lines = run["stderr"].strip().splitlines()
    assert len(lines) == 1, run["stderr"]
    assert lines[0].startswith("train.py: error: --prune-schedule needs Keras 2 (tf-keras")
    assert "without --keras 3" in lines[0] and ".h5 written by Keras 2" in lines[0]
    assert not run["exists"], "a refused run must write nothing"


def test_command_line_keras3_and_files_loaded_by_their_writer(tmp_path):
    """`python train.py --keras 3` starts a Keras 3 process and writes a file that Keras 3
    wrote; `--restore` of that file with `--keras 2` is one line and exit 2."""
    root = os.path.dirname(HERE)
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["KERAS_BACKEND"] = "tensorflow"
    out = tmp_path / "k3"
    run = subprocess.run([sys.executable, os.path.join(root, "train.py"), "--keras", "3",
                          "--model", "lenet5", "--image-size", "16", "--epochs", "1",
                          "--out", str(out)], capture_output=True, text=True, env=env,
                         timeout=600, cwd=root)
    assert run.returncode == 0, run.stderr[-2000:]
    from surgery._startup import file_keras_generation

    assert file_keras_generation(str(out / "lenet5.keras")) == 3
    clash = subprocess.run([sys.executable, os.path.join(root, "train.py"), "--restore",
                            str(out / "lenet5.keras"), "--keras", "2", "--out",
                            str(tmp_path / "no")], capture_output=True, text=True, env=env,
                           timeout=600, cwd=root)
    assert clash.returncode == 2 and len(clash.stderr.strip().splitlines()) == 1, clash.stderr
    assert "written by Keras 3" in clash.stderr and not (tmp_path / "no").exists()
