"""Structured channel pruning for Keras models, built on kerassurgeon and tfmot.

``import surgery`` selects the Keras 2 API (tf-keras) before TensorFlow is imported and
applies the compatibility patches in ``patches/`` to stock kerassurgeon 0.2.0 once.
"""
from surgery._backend import keras, tf  # noqa: F401  (first: picks the Keras 2 API)
from surgery.errors import SurgeryError, UnsupportedLayerError  # noqa: F401
