"""Export: a model converted for a runtime, and saved.

This package sits below the cost models, which run models in those runtimes:
:mod:`~surgery.export.onnx` (``export_onnx``, ``onnx_predict``), :mod:`~surgery.export.tflite`
(``export_tflite``, ``tflite_predict``, ``evaluate_tflite``), :mod:`~surgery.export.batches`
(the arrays they read) and :mod:`~surgery.export.saving` (``save_model_atomic``).
"""
