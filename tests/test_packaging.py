"""Packaging: a regular (non-editable) build installs only the ``surgery`` package and the
``keras-surgery`` console script, admits Python 3.11-3.13, pins nothing with ``==``, and the
installed CLI answers ``--help`` for itself and both subcommands (without the checkout)."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERIC = {"train", "models", "patches", "data_generator", "quiet_tf", "prune_and_finetune"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    # Build from a copy of the source tree so no build/ or *.egg-info lands in the checkout;
    # the copy holds the checkout's shims too, so the test sees if setup.py picked them up.
    src = tmp_path_factory.mktemp("src")
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist",
                                  ".git", "runs", ".hypothesis")
    for name in os.listdir(ROOT):
        path = os.path.join(ROOT, name)
        if name in ("surgery", "models", "patches"):
            shutil.copytree(path, src / name, ignore=skip)
        elif name.endswith(".py") or name in ("requirements.txt", "README.md"):
            shutil.copy(path, src / name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(src)], capture_output=True, text=True, timeout=240,
        env=dict(os.environ, PIP_NO_INPUT="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheels = [f for f in os.listdir(out) if f.endswith(".whl")]
    assert len(wheels) == 1, wheels
    return out / wheels[0]


def _dist_info(names, leaf):
    return next(n for n in names if n.endswith(".dist-info/" + leaf))


def test_wheel_installs_only_the_surgery_package(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        top = {n.split("/")[0] for n in names if ".dist-info/" not in n}
        assert top == {"surgery"}, top
        assert not {t.removesuffix(".py") for t in top} & GENERIC
        assert {"surgery/cli/main.py", "surgery/cli/prune.py", "surgery/cli/train.py",
                "surgery/data.py", "surgery/models/__init__.py",
                "surgery/patches/kerassurgeon_0_2_0.py", "surgery/_startup.py"} <= set(names)
        top_level = zf.read(_dist_info(names, "top_level.txt")).decode().split() \
            if any(n.endswith("top_level.txt") for n in names) else ["surgery"]
        assert top_level == ["surgery"], top_level
        entry = zf.read(_dist_info(names, "entry_points.txt")).decode()
        meta = zf.read(_dist_info(names, "METADATA")).decode()
    assert "keras-surgery = surgery.cli.main:main" in entry, entry
    assert "Requires-Python: <3.14,>=3.11" in meta or "Requires-Python: >=3.11,<3.14" in meta
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert requires and not [r for r in requires if "==" in r.split(";")[0]], requires  # ranges
    for name in ("tensorflow", "tf-keras", "numpy", "h5py"):
        assert any(r.split()[1].startswith(name) for r in requires), (name, requires)


def test_setup_ranges_admit_the_pins_and_torch_is_an_extra(wheel):
    """Every range of setup.py (install_requires and extras) admits the version that
    requirements.txt pins and CI tests; torch is only in the ``torch`` extra."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(_dist_info(names, "METADATA")).decode()
    pins = {}
    with open(os.path.join(ROOT, "requirements.txt")) as fh:
        for line in fh:
            line = line.split("#")[0].strip()
            if "==" in line:
                name, version = line.split("==")
                pins[name.strip().lower()] = version.strip()
    requires = [Requirement(line.split(":", 1)[1].strip())
                for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    extras = {}
    for req in requires:
        marker = str(req.marker or "")
        extra = marker.split("==")[-1].strip(" \"'") if "extra" in marker else None
        extras.setdefault(extra, []).append(req.name.lower())
        assert req.name.lower() in pins, (req.name, "is not pinned in requirements.txt")
        assert req.specifier.contains(pins[req.name.lower()], prereleases=True), (
            str(req), pins[req.name.lower()])
    assert "torch" not in extras[None] and extras["torch"] == ["torch"], extras
    assert {"jax", "torch", "onnx"} <= set(extras), extras
    assert "+" not in pins["torch"]  # a local label resolves nowhere on the package index


def test_installed_cli_help_without_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    work = tmp_path / "elsewhere"  # a user's folder: its own models/ must not be shadowed
    (work / "models").mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(site))
    runs = {"": "prune", "prune": "--model-path", "train": "--restore"}
    for sub, expected in runs.items():
        cmd = [sys.executable, "-m", "surgery.cli.main"] + ([sub] if sub else []) + ["--help"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work, env=env,
                              timeout=120)
        assert proc.returncode == 0, (sub, proc.stderr[-2000:])
        assert expected in proc.stdout, (sub, proc.stdout)
        assert proc.stderr == "", (sub, proc.stderr[-2000:])  # TensorFlow's start-up muted
    probe = subprocess.run([sys.executable, "-c", "import surgery; print(surgery.__file__)"],
                           capture_output=True, text=True, cwd=work, env=env, timeout=120)
    assert probe.stdout.strip().startswith(str(site)), probe.stdout


def test_cli_errors_from_the_subcommands_are_one_line(tmp_path):
    for sub, args in (("train", ["--model", "nosuch", "--data", "digits"]),
                      ("prune", ["--model-path", str(tmp_path / "missing.h5")])):
        proc = subprocess.run([sys.executable, "-m", "surgery.cli.main", sub, *args,
                               "--out", str(tmp_path / sub)], capture_output=True, text=True,
                              cwd=ROOT, timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"keras-surgery {sub}: error:"), lines
        assert not (tmp_path / sub).exists()
