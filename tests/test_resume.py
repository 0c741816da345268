"""Resuming a killed run: ``keras-surgery prune`` is killed with SIGKILL during fine-tuning,
right after an epoch was backed up, then run again with the same command; it must resume at
the next epoch (not epoch 1), finish, write a complete report, and never show a partial file
in the run folder (the folder is polled during both runs). Keras 2, and Keras 3 on
TensorFlow and JAX, each in its own process. Also: a finished run's folder is refused in one
line (exit 2) unless ``--overwrite``, and so is an unfinished one with other settings."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from surgery.pipeline.report import REQUIRED_KEYS
from surgery.pipeline.resume import WORKING

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 900  # per process; a loaded 2-core machine is slow
ARGS = ["--model", "lenet5", "--image-size", "16", "--baseline-epochs", "2",
        "--finetune-epochs", "3", "--batch-size", "32", "--ratio", "0.5", "--no-plots"]


def _env(backend):
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONUNBUFFERED="1")
    env.pop("TF_USE_LEGACY_KERAS", None)
    if backend:
        env["KERAS_BACKEND"] = backend
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])
    return env


class Watcher(threading.Thread):
    """Lists the run folder every few milliseconds; remembers every name it saw."""

    def __init__(self, folder):
        super().__init__(daemon=True)
        self.folder, self.seen, self.running = folder, set(), True

    def run(self):
        while self.running:
            try:
                self.seen.update(os.listdir(self.folder))
            except FileNotFoundError:
                pass
            time.sleep(0.005)


def _command(out, keras3):
    return [sys.executable, "-m", "surgery.cli.main", "prune", *ARGS, "--out", out] + \
        (["--keras", "3"] if keras3 else [])


def _kill_after_first_finetune_epoch(cmd, env):
    """Run ``cmd`` until it logs that fine-tuning epoch 1 was backed up, then SIGKILL it;
    returns everything it printed."""
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines, deadline = [], time.monotonic() + TIMEOUT_S
    try:
        for line in proc.stdout:
            lines.append(line)
            if "finetune-1: epoch 1/3 backed up" in line:
                os.kill(proc.pid, signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "never reached fine-tuning: " + \
                "".join(lines[-20:])
        rest = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "".join(lines)[-3000:]
    return "".join(lines) + (rest or "")


@pytest.mark.parametrize("keras3,backend", [(False, None), (True, "tensorflow"),
                                            (True, "jax")],
                         ids=["keras2", "keras3-tensorflow", "keras3-jax"])
def test_killed_finetuning_resumes(tmp_path, keras3, backend):
    out = str(tmp_path / "run")
    env, cmd = _env(backend), _command(out, keras3)
    watcher = Watcher(out)
    watcher.start()
    try:
        first = _kill_after_first_finetune_epoch(cmd, env)
        done = re.findall(r"finetune-1: epoch (\d)/3 backed up", first)
        assert done and "baseline: epoch 2/2 backed up" in first, first[-3000:]
        # killed during fine-tuning: only the hidden working folder is there
        assert sorted(os.listdir(out)) == [WORKING], os.listdir(out)
        second = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                                timeout=TIMEOUT_S)
    finally:
        watcher.running = False
        watcher.join()
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    last = int(done[-1])
    assert last < 3, "the first run was killed after fine-tuning had finished"
    assert "baseline: all 2 epochs were done before" in log, log[-3000:]
    assert f"finetune-1: resuming at epoch {last + 1}/3" in log, log[-3000:]
    assert f"finetune-1: epoch {last}/3 backed up" not in log  # not run again
    assert "finetune-1: epoch 3/3 backed up" in log
    with open(os.path.join(out, "report.json")) as fh:
        report = json.load(fh)
    assert all(report.get(k) is not None for k in REQUIRED_KEYS), report
    assert report["resumes"] == 1 and 0.0 <= report["acc_finetuned"] <= 1.0
    assert report["finetune_seconds"] > 0 and report["baseline_seconds"] > 0
    ext = "keras" if keras3 else "h5"
    artifacts = {f"pruned.{ext}", f"baseline.{ext}", "plan.json", "report.json", "report.md"}
    assert set(os.listdir(out)) == artifacts  # working folder and temporaries gone
    # every name ever seen: the artifacts (moved in whole), the working folder, and the
    # hidden temporary files of atomic writes; never a visible partial file
    odd = {n for n in watcher.seen - artifacts - {WORKING}
           if not (n.startswith(".") and ".tmp" in n)}
    assert not odd, odd

    if keras3:
        return
    again = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=TIMEOUT_S)
    lines = again.stderr.strip().splitlines()
    assert again.returncode == 2 and len(lines) == 1, again.stderr
    assert "holds a finished run" in lines[0] and "--overwrite" in lines[0]


def test_refuses_other_settings(tmp_path):
    from surgery.errors import SurgeryError
    from surgery.pipeline.resume import RunFolder

    out = str(tmp_path / "run")
    first = RunFolder(out, {"lr": 0.1, "epochs": 3}, finished="report.json")
    first.check()
    first.start()
    with pytest.raises(SurgeryError, match=r"other settings \(lr 0.1 there, 0.2 now\)"):
        RunFolder(out, {"lr": 0.2, "epochs": 3}, finished="report.json").check()
    again = RunFolder(out, {"lr": 0.2, "epochs": 3}, finished="report.json", overwrite=True)
    again.check()
    assert not again.resuming and not os.path.exists(os.path.join(out, WORKING))
