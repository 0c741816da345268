"""Keras 3 on more than one device, through the CLI: ``keras-surgery prune --keras 3`` with
``--strategy mirrored`` on the TensorFlow backend (two logical CPU devices) and
``--strategy dataparallel`` on JAX (two forced host devices), each in its own child process
(tests/keras3_distribution_child.py). Fine-tuning must finish with the digits splits, whose
last batch is partial; the report must give the real replica count (2); the run folder
must hold exactly the artifacts of one writer. The PyTorch backend must refuse
``--strategy`` in one line that names what to do instead."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ARTIFACTS = ["baseline.keras", "plan.json", "pruned.keras", "report.json", "report.md"]


def _env(backend, **extra):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_ENABLE_ONEDNN_OPTS="0",
               TF_CPP_MIN_LOG_LEVEL="3", **extra)
    env.pop("TF_USE_LEGACY_KERAS", None)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])
    return env


@pytest.mark.parametrize("backend,strategy,extra", [
    ("tensorflow", "mirrored", {}),
    ("jax", "dataparallel", {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}),
], ids=["tensorflow-mirrored", "jax-dataparallel"])
def test_keras3_strategy_finetunes_on_two_devices(tmp_path, backend, strategy, extra):
    out = str(tmp_path / "run")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "keras3_distribution_child.py"),
                           strategy, out], env=_env(backend, **extra), capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    assert proc.returncode == 0 and lines, (proc.stdout + proc.stderr)[-3000:]
    result = json.loads(lines[-1])
    assert result["status"] == 0, (proc.stdout + proc.stderr)[-3000:]
    assert result["replicas"] == 2 and result["strategy"] == strategy
    assert 0.0 <= result["acc_finetuned"] <= 1.0
    assert result["files"] == ARTIFACTS


def test_torch_refuses_strategy_in_one_line(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "surgery.cli.main", "prune", "--keras", "3",
                           "--model", "lenet5", "--strategy", "dataparallel", "--out",
                           str(out)], env=_env("torch"), capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert "torch backend" in lines[0] and "KERAS_BACKEND=jax" in lines[0]
    assert not out.exists()
