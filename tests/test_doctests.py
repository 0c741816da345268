"""Every ``>>>`` example in the plugin's modules runs, and passes, in the suite."""
import doctest
import importlib
import importlib.util
import os
import pkgutil
import sys

import pytest

import surgery

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKOUT_MODULES = ["data_generator", "train", "prune_and_finetune", "models",
                    "models._common", "models.lenet", "models.mobilenet_v2", "models.resnet",
                    "models.vgg"]


def _modules_with_examples():
    names = [m.name for m in pkgutil.walk_packages(surgery.__path__, "surgery.")]
    names += [n for n in CHECKOUT_MODULES if importlib.util.find_spec(n) is not None]
    found = []
    for name in sorted(set(names)):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        with open(spec.origin, encoding="utf-8") as source:
            if ">>>" in source.read():
                found.append(name)
    return found


MODULES = _modules_with_examples()


def test_the_examples_are_found():
    assert len(MODULES) >= 15, MODULES


@pytest.mark.parametrize("name", MODULES)
def test_module_examples_pass(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False, report=False)
    assert result.attempted > 0, f"{name}: no examples ran"
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
