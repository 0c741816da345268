"""Measured cost models: what a layer or a model costs in the runtime it is deployed to.

This package owns latency as a cost. :mod:`~surgery.cost.cpu` says what the CPU offers,
:mod:`~surgery.cost.runtimes` runs a model in ONNX Runtime, TFLite (XNNPACK) or TensorFlow,
:mod:`~surgery.cost.timing` times runners interleaved, :mod:`~surgery.cost.micro` times
one layer at candidate widths, :mod:`~surgery.cost.cache` keeps those times on disk keyed by
everything they depend on, :mod:`~surgery.cost.table` turns them into a cost over channel
group widths, and :mod:`~surgery.calibration.latency` plans for a latency target with the
allocation search of :mod:`surgery.pruning.allocation`.

Example::

    import surgery
    p = surgery.plan(model, latency_target=0.5, runtime="onnxruntime", batch_size=32,
                     threads=2)
    p.settings["latency_removed"], p.settings["round_to"]
    surgery.cost.model_latency(surgery.apply(model, p), "onnxruntime", batch_size=32)
"""
from surgery.cost.cache import ENV, TableCache, cache_dir
from surgery.cost.cpu import cpu_features, simd_block
from surgery.cost.runtimes import RUNTIMES, get_runtime
from surgery.cost.table import LatencyEstimator, LatencyTable
from surgery.cost.timing import compare, interleaved, model_latency

__all__ = ["ENV", "TableCache", "cache_dir", "cpu_features", "simd_block", "RUNTIMES",
           "get_runtime", "LatencyEstimator", "LatencyTable", "compare", "interleaved",
           "model_latency"]
