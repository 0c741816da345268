"""Shared test setup: Keras 2 API first, quiet TensorFlow, a fresh Keras session per test."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402

import surgery  # noqa: E402,F401  (selects tf-keras before anything imports TensorFlow)


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    surgery.keras.backend.clear_session()
    yield
    surgery.keras.backend.clear_session()
