"""Running a Keras 3 case in a child process of its own.

The suite's process imports tf-keras first (``conftest.py``), and a process holds one Keras
generation and one backend, so every Keras 3 case runs as a child with ``KERAS_BACKEND``
set and ``TF_USE_LEGACY_KERAS`` unset. A child prints its findings as one
``RESULT <json>`` line on standard output; the last such line is its result.
"""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def keras3_env(backend: str) -> dict:
    """This process's environment for a Keras 3 child on ``backend``, the checkout first on
    the import path."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["KERAS_BACKEND"] = backend
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return env


def start(backend: str, script: str, *args) -> subprocess.Popen:
    """Start ``script`` (a file in ``tests/``, or ``-c`` and code) with ``args``."""
    command = [sys.executable] + ([script] if script == "-c" else [os.path.join(HERE, script)])
    return subprocess.Popen(command + [str(a) for a in args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=keras3_env(backend),
                            cwd=ROOT)


def finish(proc: subprocess.Popen, timeout: float = 600) -> dict:
    """The result of a child from :func:`start`; fails the test, with the end of its
    standard error, when it exits non-zero or prints no ``RESULT`` line. Asked again, the
    same result."""
    if hasattr(proc, "result"):
        return proc.result
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}:\n{err[-3000:]}"
    proc.result = json.loads(lines[-1][len("RESULT "):])
    return proc.result


def run_case(backend: str, script: str, *args, timeout: float = 600) -> dict:
    """:func:`start` a child and wait for its :func:`finish`."""
    return finish(start(backend, script, *args), timeout)
