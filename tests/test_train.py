"""train.py: --help documents the flags, tiny real runs in every mode write an .h5 that loads,
and user errors exit 2 with one line on stderr and no files."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from surgery._backend import keras
from surgery.pipeline.regularizers import CombinedRegularizer, GroupLasso
from surgery.pipeline.sparsity import prunable_kernels, total_sparsity

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model", "lenet5", "--data", "digits", "--image-size", "32", "--epochs", "1"]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_help_lists_every_flag(capsys):
    assert train.main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--data", "--image-size", "--epochs", "--batch-size", "--init-lr",
                 "--optimizer", "--lr-schedule", "--warmup-epochs", "--out", "--restore",
                 "--seed", "--l1", "--l2", "--gl-filter", "--gl-channel", "--gl-all",
                 "--bn-l1", "--angular-filter", "--angular-channel", "--prune-schedule",
                 "--target-sparsity", "--begin-step", "--end-step", "--m-by-n",
                 "--unstructured-threshold", "--unstructured-ratio", "--unstructured-scope",
                 "--finetune-epochs"):
        assert flag in out, flag
    assert "default" in out


def test_plain_run_then_restore_with_penalties(tmp_path, capsys):
    out = tmp_path / "plain"
    assert train.main(TINY + ["--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("test accuracy ")
    accuracy = float(lines[-1].split()[2])
    assert 0.3 < accuracy <= 1.0  # one epoch of LeNet-5 on digits learns something
    path = out / "lenet5.h5"
    model = keras.models.load_model(str(path))
    assert model.output_shape == (None, 10)
    assert len(_rows(out / "train_log.csv")) == 1
    assert not [f for f in os.listdir(out) if ".tmp" in f]

    again = tmp_path / "again"
    assert train.main(["--restore", str(path), "--epochs", "2", "--optimizer", "adam",
                       "--lr-schedule", "step", "--warmup-epochs", "0.5",
                       "--gl-filter", "1e-3", "--l1", "1e-5", "--out", str(again)]) == 0
    continued = keras.models.load_model(str(again / "lenet5_continued.h5"))
    reg = continued.get_layer("conv1").kernel_regularizer
    assert isinstance(reg, (GroupLasso, CombinedRegularizer))
    assert len(_rows(again / "train_log.csv")) == 2


def test_tfmot_run_saves_stripped_sparse_model(tmp_path, capsys):
    out = tmp_path / "tfmot"
    assert train.main(TINY + ["--prune-schedule", "polynomial", "--target-sparsity", "0.5",
                              "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "sparsity 0.5" in last
    model = keras.models.load_model(str(out / "lenet5.h5"))  # plain load
    _, per_layer = total_sparsity(model)
    assert set(per_layer) == {"conv1", "conv2", "fc1", "fc2", "predictions"}
    assert min(per_layer.values()) >= 0.49


def test_m_by_n_run(tmp_path):
    out = tmp_path / "m24"
    assert train.main(TINY + ["--m-by-n", "2,4", "--out", str(out)]) == 0
    kernel = prunable_kernels(keras.models.load_model(str(out / "lenet5.h5")))["fc1"].numpy()
    blocks = kernel.T.reshape(kernel.shape[1], -1, 4)  # 400 inputs: 100 blocks of 4
    assert np.count_nonzero(blocks, axis=-1).max() <= 2


def test_unstructured_run_keeps_mask_through_finetuning(tmp_path, capsys):
    out = tmp_path / "uns"
    assert train.main(TINY + ["--unstructured-ratio", "0.6", "--unstructured-scope", "global",
                              "--finetune-epochs", "1", "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "right after pruning" in last and "sparsity 0.6" in last
    total, _ = total_sparsity(keras.models.load_model(str(out / "lenet5.h5")))
    assert total == pytest.approx(0.6, abs=1e-3)
    rows = _rows(out / "train_log.csv")
    assert [r["epoch"] for r in rows] == ["0", "1"]


@pytest.mark.parametrize("extra", [
    ["--model", "nosuch"],
    ["--model", "lenet5", "--data", "no/such/folder"],
    ["--restore", "missing.h5"],
    ["--model", "lenet5"],  # digits are 8x8: too small for LeNet-5 without --image-size
    ["--model", "lenet5", "--unstructured-threshold", "0.1", "--unstructured-ratio", "0.5"],
    ["--model", "lenet5", "--m-by-n", "4,2"],
    ["--model", "lenet5", "--epochs", "0"],
    ["--model", "lenet5", "--prune-schedule", "constant", "--unstructured-ratio", "0.5"],
    ["--model", "lenet5", "--target-sparsity", "0.5"],
    ["--model", "lenet5", "--finetune-epochs", "2"],
    ["--model", "lenet5", "--l1", "-1"],
    ["--model", "lenet5", "--optimizer", "rmsprop"],
])
def test_user_errors_exit_2_with_one_line_and_no_files(tmp_path, capsys, extra):
    out = tmp_path / "out"
    assert train.main(extra + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error" in err, err
    assert not out.exists()


def test_cli_error_from_the_shell_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--model", "nosuch",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "nosuch" in proc.stderr and not (tmp_path / "o").exists()


def test_warmup_schedules():
    for kind in ("cosine", "step", "piecewise"):
        s = train.WarmupSchedule.make(1.0, total_steps=100, warmup_steps=10, kind=kind,
                                      step_size=30, decay=0.1)
        assert float(s(5)) == pytest.approx(0.5 if kind == "cosine" else 0.6)
        assert float(s(10)) == pytest.approx(1.0)
        assert type(s).from_config(s.get_config()).get_config() == s.get_config()
    cosine = train.WarmupSchedule.make(1.0, 100, 10, "cosine")
    assert type(cosine).__name__ == "CosineDecay"  # Keras's own
    assert float(cosine(55)) == pytest.approx(0.5, abs=1e-6) and float(cosine(100)) < 1e-6
    step = train.WarmupSchedule(1.0, 100, 10, "step", step_size=30)
    assert [round(float(step(t)), 4) for t in (39, 40, 70)] == [1.0, 0.1, 0.01]
    piecewise = train.WarmupSchedule(1.0, 100, 10, "piecewise")
    assert [round(float(piecewise(t)), 4) for t in (54, 55, 77, 78)] == [1.0, 0.1, 0.1, 0.01]


def test_every_tfmot_and_unstructured_flag_is_refused_on_keras3():
    """train_args.KERAS2_ONLY must list every flag of the tfmot and unstructured groups, so
    a Keras 3 run refuses each one in one line (tests/test_keras3_train.py runs one)."""
    from surgery.cli import train_args

    parser = train_args.build_parser()
    groups = [g for g in parser._action_groups
              if g.title and ("tfmot" in g.title or "unstructured" in g.title)]
    flags = {a.dest for g in groups for a in g._group_actions}
    assert len(groups) == 2 and flags == set(train_args.KERAS2_ONLY), flags


def test_finished_folder_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "done"
    assert train.main(TINY + ["--out", str(out)]) == 0
    capsys.readouterr()
    assert train.main(TINY + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "finished run" in err[0] and "--overwrite" in err[0], err
    assert train.main(TINY + ["--out", str(out), "--overwrite"]) == 0
    assert sorted(f for f in os.listdir(out) if f != "logs") == ["lenet5.h5", "train_log.csv"]
