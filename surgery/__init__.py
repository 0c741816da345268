"""Structured channel pruning for Keras models, built on kerassurgeon and tfmot.

In a fresh process ``import surgery`` selects the Keras 2 API (tf-keras) before TensorFlow
is imported; in a process that already imported Keras 3 or TensorFlow it changes nothing,
and Keras 3 models go through the Keras 3 graph adapter. ``surgery.Surgeon``
(kerassurgeon, with the compatibility patches in ``patches/`` applied once) loads on first
use. This module is the package's face: it gives the engine (layer rules, channel groups,
zeroing, FLOPs), pruning (criteria, plans of cuts, apply/verify) and the planner
(:func:`plan` for every budget, from :mod:`surgery.calibration`); export, sensitivity
analysis, adaptive BatchNormalization and the measured cost models load on first use. The
layers below it are described in ``docs/architecture.md``.

Example::

    import surgery
    smaller = surgery.delete_channels(model, "block_1_expand", [0, 3, 5])
"""
from __future__ import annotations

import importlib

from surgery._backend import keras, legacy_tf_keras, tf  # first: picks the Keras 2 API
from surgery.errors import SurgeryError, UnsupportedLayerError
from surgery.engine.rules import LayerRule, register_rule, rule_for
from surgery.engine.handlers import register_handler
from surgery.engine.zeroing import zero_channels
from surgery.engine.flatten import flatten_model
from surgery.engine.groups import ChannelGroup, channel_groups
from surgery.engine.flops import count_flops
from surgery.pruning.plan import Cut, PrunePlan
from surgery.pruning.execution import apply, delete_channels, verify
from surgery.pruning import criteria
from surgery.calibration.planner import plan, prune
from surgery.model_files import check_model_file, load_model_checked

if legacy_tf_keras():  # tf.keras is Keras 2: kerassurgeon works, patch it now, as always
    from surgery import patches as _patches

    _patches.apply_all()
else:  # a Keras 3 process: .keras files carrying the sparsity penalties load by name
    import surgery.pipeline.regularizers3  # noqa: F401
    from surgery.models.hub_blocks import register_lazily as _register_hub_blocks

    _register_hub_blocks()  # pruned keras-hub blocks load by name (keras-hub imported lazily)
    from surgery.engine.hub_models import register_lazily as _register_hub_models

    _register_hub_models()  # and cut keras-hub backbones (surgery>PrunedBackbone)

# Pipeline functions offered at top level, imported on first use (TFLite and matplotlib
# are slow to import and most engine users never need them).
_LAZY = {
    "Surgeon": "surgery.engine.surgeon",  # Keras 2 only: loads kerassurgeon
    "export_tflite": "surgery.export.tflite",
    "evaluate_tflite": "surgery.export.tflite",
    "tflite_predict": "surgery.export.tflite",
    "export_onnx": "surgery.export.onnx",
    "onnx_predict": "surgery.export.onnx",
    "size_table": "surgery.pipeline.export",
    "size_table_markdown": "surgery.pipeline.export",
    "sensitivity": "surgery.pipeline.sensitivity",
    "accuracy_vs_flops": "surgery.pipeline.sensitivity",
    "model_latency": "surgery.cost.timing",
    "recalibrate_batchnorm": "surgery.calibration.batchnorm",
    "perplexity": "surgery.pipeline.language",  # language models (Keras 3)
    "distill": "surgery.pipeline.language",
    "load_text": "surgery.text_data",
}

__all__ = [
    "keras", "tf",
    "SurgeryError", "UnsupportedLayerError",
    "LayerRule", "register_rule", "rule_for", "register_handler",
    "Surgeon", "delete_channels", "zero_channels", "flatten_model",
    "ChannelGroup", "channel_groups", "count_flops",
    "Cut", "PrunePlan", "plan", "apply", "prune", "verify", "criteria",
    "check_model_file", "load_model_checked",
    *_LAZY,
]


def __getattr__(name: str):
    if name == "cost":  # the measured cost models: runtimes, tables, timing
        return importlib.import_module("surgery.cost")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'surgery' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
