"""Untrusted model files: a Lambda layer's code never runs unless the user trusts the file,
in the library (surgery.check_model_file) and in both CLIs (--trust-model-code)."""
import base64
import json
import marshal
import os
import subprocess
import sys

import numpy as np
import pytest

import prune_and_finetune as pf
import surgery
import train
from surgery import keras
from surgery.model_files import _looks_like_code

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _touching_function(marker):
    """A function whose body writes ``marker`` (so running it is visible)."""
    ns = {}
    exec(f"def touch(x):\n    open({str(marker)!r}, 'w').write('ran')\n    return x\n", ns)
    return ns["touch"]


def _lambda_model(marker, nested=False, shape=(8, 8, 1), classes=3):
    inp = keras.Input(shape)
    x = keras.layers.Conv2D(4, 3, padding="same")(inp)
    lam = keras.layers.Lambda(_touching_function(marker), name="touch_layer")
    if nested:
        sub_in = keras.Input(x.shape[1:])
        lam = keras.Model(sub_in, lam(sub_in), name="inner")
    x = lam(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(classes, activation="softmax")(x))


@pytest.fixture
def lambda_h5(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "lam.h5"
    _lambda_model(marker).save(path)
    marker.unlink()  # building the model ran the function once
    return path, marker


def test_lambda_h5_is_refused_without_running_code(lambda_h5):
    path, marker = lambda_h5
    with pytest.raises(surgery.SurgeryError, match=r"layer 'touch_layer' \(Lambda\)") as info:
        surgery.check_model_file(str(path))
    assert "trust_code=True" in str(info.value) and "--trust-model-code" in str(info.value)
    assert not marker.exists()
    surgery.check_model_file(str(path), trust_code=True)  # trusted: no check
    with pytest.raises(surgery.SurgeryError):
        surgery.load_model_checked(str(path))
    assert not marker.exists()
    assert surgery.load_model_checked(str(path), trust_code=True) is not None
    assert marker.exists()  # loading really runs the code: the check is not hypothetical


def test_nested_lambda_and_keras_format_are_refused(tmp_path):
    marker = tmp_path / "m.txt"
    model = _lambda_model(marker, nested=True)
    model.save(tmp_path / "nested.h5")
    with pytest.raises(surgery.SurgeryError, match="touch_layer"):
        surgery.check_model_file(str(tmp_path / "nested.h5"))
    model.save(tmp_path / "nested.keras")
    with pytest.raises(surgery.SurgeryError, match="touch_layer"):
        surgery.check_model_file(str(tmp_path / "nested.keras"))


def test_plain_models_pass_and_code_strings_are_recognised(tmp_path):
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="GlobalAveragePooling2DYwxy")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inp, keras.layers.Dense(3)(x)).save(tmp_path / "ok.h5")
    surgery.check_model_file(str(tmp_path / "ok.h5"))
    code = base64.b64encode(marshal.dumps(compile("x = 1", "<s>", "exec"))).decode()
    assert _looks_like_code(code)
    import pickle
    assert _looks_like_code(base64.b64encode(pickle.dumps({"a": [1, 2, 3] * 5})).decode())
    for text in ("GlobalAveragePooling2D", "YwxyYwxyYwxyYwxy", "conv2d_1", "relu" * 8):
        assert not _looks_like_code(text), text


def test_function_stored_as_code_is_refused_even_without_lambda_class(tmp_path):
    import h5py
    code = base64.b64encode(marshal.dumps(compile("x = 1", "<s>", "exec"))).decode()
    config = {"class_name": "Functional", "config": {"name": "m", "layers": [
        {"class_name": "MyLayer", "config": {"name": "sneaky", "fn": code}}]}}
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.attrs["model_config"] = json.dumps(config)
    with pytest.raises(surgery.SurgeryError, match=r"layer 'sneaky' \(MyLayer\)"):
        surgery.check_model_file(str(tmp_path / "x.h5"))


@pytest.mark.parametrize("cli", ["train.py", "prune_and_finetune.py"])
def test_clis_refuse_lambda_h5_with_one_line(lambda_h5, tmp_path, cli):
    path, marker = lambda_h5
    flag = "--restore" if cli == "train.py" else "--model-path"
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, cli), flag, str(path),
                           "--data", "digits", "--out", str(out)], capture_output=True,
                          text=True, cwd=ROOT, timeout=180)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "touch_layer" in lines[0] and "--trust-model-code" in lines[0]
    assert not marker.exists() and not out.exists()


def test_clis_load_lambda_h5_with_trust(lambda_h5, tmp_path, capsys):
    """Trusted, the file loads (its code runs) and the CLI goes on to the next check: the
    model's 3 outputs do not match the 10 digit classes (one line, exit 2)."""
    path, marker = lambda_h5
    assert train.main(["--restore", str(path), "--data", "digits", "--trust-model-code",
                       "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "3 outputs" in err and len(err.strip().splitlines()) == 1, err
    assert marker.exists()
    marker.unlink()
    assert pf.main(["--model-path", str(path), "--data", "digits", "--trust-model-code",
                    "--quiet", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "3 outputs" in err and len(err.strip().splitlines()) == 1, err
    assert marker.exists()


def test_report_before_size_excludes_optimizer_state(tmp_path):
    """An input .h5 saved with Adam's state is measured as the pruned one is saved."""
    from surgery.h5size import saved_h5_sizes
    from surgery.models import lenet5

    keras.utils.set_random_seed(0)
    model = lenet5(input_shape=(16, 16, 1), classes=10)
    model.compile("adam", "categorical_crossentropy")
    model.fit(np.zeros((4, 16, 16, 1), "float32"), np.eye(10, dtype="float32")[:4],
              verbose=0)
    path = tmp_path / "with_optimizer.h5"
    model.save(path, include_optimizer=True)
    expected, expected_gz = saved_h5_sizes(keras.models.load_model(path, compile=False))
    assert expected < 0.8 * os.path.getsize(path)  # the optimizer state is real bulk
    result = pf.run(pf.build_parser().parse_args(
        ["--model-path", str(path), "--image-size", "16", "--ratio", "0.3",
         "--finetune-epochs", "1", "--quiet", "--batch-size", "64",
         "--out", str(tmp_path / "run")]))
    report = result.report
    assert abs(report["h5_bytes_baseline"] - expected) <= 0.02 * expected
    assert abs(report["h5_gzip_bytes_baseline"] - expected_gz) <= 0.05 * expected_gz
    assert report["h5_bytes_baseline"] < os.path.getsize(path)
    assert os.path.getsize(result.pruned_path) < report["h5_bytes_baseline"]
