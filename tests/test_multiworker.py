"""More than one machine: ``--strategy multiworker`` for real (two tf-keras worker
processes on 127.0.0.1, each with its own ``TF_CONFIG``, training in step through
``tf.distribute.MultiWorkerMirroredStrategy``; only the chief writes the run folder), the
chief rule of :mod:`surgery.cli._workers`, and Keras 3's data parallelism on JAX
(``keras.distribution.DataParallel`` over two forced host CPU devices) fine-tuning a pruned
model. Every child runs with a timeout and is killed when it overruns."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from surgery.cli._workers import artifact_folder, is_chief, worker_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
TINY = ["--model", "lenet5", "--image-size", "16", "--baseline-epochs", "1",
        "--finetune-epochs", "1", "--batch-size", "64", "--ratio", "0.5", "--no-plots"]
BUDGET_S = 90


def _env(**extra) -> dict:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _free_ports(n: int) -> list:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _strategy(task_type, task_id, cluster):
    spec = SimpleNamespace(as_dict=lambda: cluster)
    resolver = SimpleNamespace(task_type=task_type, task_id=task_id, cluster_spec=lambda: spec)
    return SimpleNamespace(cluster_resolver=resolver)


def test_chief_rule():
    workers = {"worker": ["a:1", "b:2"]}
    with_chief = {"chief": ["c:0"], "worker": ["a:1", "b:2"]}
    assert is_chief(None) and is_chief(SimpleNamespace(cluster_resolver=None))
    assert is_chief(_strategy(None, None, {}))  # a lone MultiWorkerMirroredStrategy
    assert is_chief(_strategy("worker", 0, workers))
    assert not is_chief(_strategy("worker", 1, workers))
    assert is_chief(_strategy("chief", 0, with_chief))
    assert not is_chief(_strategy("worker", 0, with_chief))
    assert worker_name(_strategy("worker", 1, workers)) == "worker 1 of 2"
    assert worker_name(None) == ""


def test_artifact_folder(tmp_path):
    out = tmp_path / "run"
    with artifact_folder(str(out), chief=False) as scratch:
        assert not scratch.startswith(str(out)) and os.path.isdir(scratch)
        (open(os.path.join(scratch, "x"), "w")).close()
    assert not os.path.exists(scratch) and not out.exists()
    with artifact_folder(str(out), chief=True) as folder:
        assert folder == str(out) and out.is_dir()
    with pytest.raises(KeyError):
        with artifact_folder(str(tmp_path / "failed"), chief=True):
            raise KeyError("x")
    assert not (tmp_path / "failed").exists()  # created here and the writing failed


def test_multiworker_two_processes(tmp_path):
    """Two workers train in step; worker 0 (the chief) writes the run folder once, worker 1
    writes only a scratch folder it deletes, and prints a one-line note, no report."""
    out = tmp_path / "run"
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs, logs = [], []
    t0 = time.monotonic()
    try:
        for i in range(2):
            config = {"cluster": cluster, "task": {"type": "worker", "index": i}}
            log = open(tmp_path / f"worker{i}.log", "w+")
            logs.append(log)  # files, not pipes: a full pipe would stall the all-reduce
            procs.append(subprocess.Popen(
                [sys.executable, os.path.join(ROOT, "prune_and_finetune.py"), *TINY,
                 "--strategy", "multiworker", "--out", str(out)],
                stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path),
                env=_env(TF_CONFIG=json.dumps(config))))
        for p in procs:
            p.communicate(timeout=max(1.0, BUDGET_S - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        pytest.fail(f"multiworker run did not finish in {BUDGET_S} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    texts = []
    for log in logs:
        log.seek(0)
        texts.append(log.read())
        log.close()
    chief, other = texts
    assert [p.returncode for p in procs] == [0, 0], [t[-3000:] for t in texts]
    for text in texts:  # both fine-tuned (the pruned model, after the baseline training)
        assert "training the baseline lenet5" in text and "fine-tuning lenet5" in text
    last = chief.strip().splitlines()[-1]
    assert last.startswith(f"artifacts in {out}: ")
    named = set(last.split(": ", 1)[1].split(", "))
    assert named == set(os.listdir(out)) == {"baseline.h5", "pruned.h5", "plan.json",
                                             "report.json", "report.md"}
    report = json.loads((out / "report.json").read_text())
    assert report["strategy"] == "multiworker" and report["replicas"] == 2
    # worker 1: no report table, no artifacts line, one note; it wrote to a deleted scratch
    assert not any(line.startswith("artifacts in") for line in other.splitlines())
    assert "| after fine-tuning |" not in other
    # its note is the last thing it prints; TensorFlow's own log of the chief going away
    # first (gRPC's "failed to connect to all addresses") may follow it at exit
    lines = other.strip().splitlines()
    notes = [i for i, line in enumerate(lines) if line.startswith("worker 1 of 2: ")]
    assert len(notes) == 1, other[-2000:]
    assert not any(line.startswith(("|", "artifacts", "worker")) or "INFO" in line
                   for line in lines[notes[0] + 1:]), other[-2000:]
    wrote = re.findall(r"wrote (\S+)/report\.json", other)
    assert wrote and all(os.path.abspath(w) != str(out) for w in wrote)
    assert not any(os.path.exists(w) for w in wrote)
    assert re.findall(r"wrote (\S+)/report\.json", chief) == [str(out)]


def test_keras3_dataparallel_on_jax(tmp_path):
    """JAX's path: DataParallel over two host CPU devices fine-tunes a pruned Keras 3 model
    (loss falls, weights move, every variable lives on both devices, batches are split)."""
    pytest.importorskip("jax")
    env = _env(KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    try:
        proc = subprocess.run([sys.executable, os.path.join(HERE, "dataparallel_child.py")],
                              capture_output=True, text=True, cwd=str(tmp_path), env=env,
                              timeout=BUDGET_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"DataParallel child did not finish in {BUDGET_S} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["backend"] == "jax" and got["distribution"] == "DataParallel"
    assert len(got["devices"]) == 2
    assert got["widths"] == [4, 4]  # the cut happened: half of each conv's 8 filters
    assert got["loss"][-1] < 0.5 * got["loss"][0]
    assert got["moved"] > 1e-3
    assert got["spans"] and all(n == 2 for n in got["spans"])
    assert got["batch_axes"][0] == "batch"
