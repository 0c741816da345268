"""Every ``keras.applications`` family of Keras 3 prunes exactly, on every backend.

On TensorFlow, one model of each family (ResNet: ResNet50 and ResNet50V2) is built in
float64 (``keras.config.set_floatx``) with a float64 input, so that the equivalence oracle
(:func:`surgery.verify`: the pruned model against the original with the planned channels
zeroed) is exact up to rounding of float64 (≤ 1e-8) — any wrong cut shows. On JAX and
PyTorch, three of them prune in float32 (≤ 1e-5). Every model loses at least 15 % of its
parameters, pruning visibly moves its outputs (so, equal to the zeroed model, the zeroing
does too), the classifier keeps its units, and for two cheap models a cut of the wrong
channels is caught.

Keras 3 runs in child processes (tests/keras3_apps_cases.py), one per backend, all started
at once when the first test needs them (they spend most of their time in single-threaded
Python, cloning graphs); each test reads its model's line.
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TF_MODELS = ("ConvNeXtTiny", "DenseNet121", "EfficientNetB0", "EfficientNetV2B0",
             "InceptionResNetV2", "InceptionV3", "MobileNet", "MobileNetV2",
             "MobileNetV3Small", "NASNetMobile", "ResNet50", "ResNet50V2", "VGG16",
             "Xception")
OTHER_MODELS = ("ConvNeXtTiny", "MobileNetV2", "ResNet50")  # keras3_apps_cases.OTHER_BACKENDS
BACKENDS = {"tensorflow": TF_MODELS, "jax": OTHER_MODELS, "torch": OTHER_MODELS}
TOLERANCE = {"tensorflow": 1e-8, "jax": 1e-5, "torch": 1e-5}
CASES = [(b, m) for b, models in BACKENDS.items() for m in models]
#: JAX compiles every eager operation for each new shape (three models' worth here):
#: without LLVM's optimisations that takes half the time, and the results are the same
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


class Children:
    """The child processes, started together; results parsed per backend on demand."""

    def __init__(self, tmp, selected):
        env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
        extra = {"jax": {"JAX_PLATFORMS": "cpu",
                         "XLA_FLAGS": f"{env.get('XLA_FLAGS', '')} {FAST_XLA}".strip()}}
        self.procs, self.results = {}, {}
        for backend, models in selected.items():
            log = open(tmp / f"{backend}.log", "w+")
            self.procs[backend] = (log, subprocess.Popen(
                [sys.executable, os.path.join(HERE, "keras3_apps_cases.py"), backend,
                 *(models or ["_families"])], stdout=log, stderr=subprocess.STDOUT, text=True,
                env={**env, **extra.get(backend, {}), "KERAS_BACKEND": backend}))

    def result(self, backend, model):
        assert backend in self.procs, f"no {backend} child was started"
        if backend not in self.results:
            log, proc = self.procs[backend]
            try:
                proc.wait(timeout=900)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.seek(0)
            text = log.read()
            found = {}
            for line in text.splitlines():
                if line.startswith("RESULT "):
                    row = json.loads(line[len("RESULT "):])
                    found[row["model"]] = row
            self.results[backend] = (found, f"exit {proc.returncode}:\n{text[-3000:]}")
        found, tail = self.results[backend]
        assert model in found, f"{backend} child gave no result for {model}; {tail}"
        return found[model]

    def close(self):
        for log, proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


def _selected(request) -> dict:
    """``{backend: [models]}`` of this module's tests that pytest will run (``-k`` runs
    only the children and models it needs)."""
    selected: dict = {}
    for item in request.session.items:
        if item.module is not request.module:
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "backend" in params:
            selected.setdefault(params["backend"], []).append(params["model"])
        elif item.name == "test_every_family_is_covered":
            selected.setdefault("tensorflow", [])
    return selected


@pytest.fixture(scope="module")
def children(tmp_path_factory, request):
    started = Children(tmp_path_factory.mktemp("keras3_apps"), _selected(request))
    yield started
    started.close()


@pytest.mark.parametrize("backend,model", CASES, ids=[f"{b}-{m}" for b, m in CASES])
def test_application_prunes_exactly_and_smaller(children, backend, model):
    result = children.result(backend, model)
    assert "error" not in result, result.get("trace", result)
    dtype = "float64" if backend == "tensorflow" else "float32"
    assert result["dtypes"] == [dtype], result["dtypes"]
    assert result["verify"] <= TOLERANCE[backend], \
        f"{backend} {model}: pruned differs from the zeroed original by {result['verify']:.3g}"
    assert result["moved"] > 1e-2, "pruning (= zeroing the planned channels) must move outputs"
    before, after = result["params"]
    assert after <= 0.85 * before, f"only {1 - after / before:.1%} fewer parameters"
    assert result["output_shape"][0] == result["output_shape"][1]
    if "verify_wrong_channels" in result:
        assert result["verify_wrong_channels"] > 1e-3, "the oracle must catch a wrong cut"


def test_every_family_is_covered(children):
    """One model per ``keras.applications`` module of Keras 3 (ResNet v1 and v2 both;
    VGG19 counts as VGG16's family), and every one of them is tested on TensorFlow."""
    families = children.result("tensorflow", "_families")
    assert families["covered"] == families["all"], families
    assert len(families["all"]) == 14, families
    assert set(TF_MODELS) == set(BACKENDS["tensorflow"])
