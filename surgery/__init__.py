"""Structured channel pruning for Keras models, built on kerassurgeon and tfmot.

``import surgery`` selects the Keras 2 API (tf-keras) before TensorFlow is imported and
applies the compatibility patches in ``patches/`` to stock kerassurgeon 0.2.0 once.

Example::

    import surgery
    smaller = surgery.delete_channels(model, "block_1_expand", [0, 3, 5])
"""
from surgery._backend import keras, tf  # noqa: F401  (first: picks the Keras 2 API)
from surgery.errors import SurgeryError, UnsupportedLayerError  # noqa: F401
from surgery.registry import register_handler  # noqa: F401
from surgery.surgeon import Surgeon, delete_channels  # noqa: F401
from surgery import handlers  # noqa: F401,E402  (registers the built-in handlers)
from surgery.zeroing import zero_channels  # noqa: F401
from surgery.nesting import flatten_model  # noqa: F401,E402
from surgery.graph import ChannelGroup, channel_groups  # noqa: F401,E402
from surgery.plan import PrunePlan, plan  # noqa: F401,E402
from surgery.apply import apply, prune, verify  # noqa: F401,E402
from surgery.flops import count_flops  # noqa: F401,E402
from surgery import criteria  # noqa: F401,E402
from surgery.export import (  # noqa: F401,E402
    evaluate_tflite, export_tflite, size_table, size_table_markdown, tflite_predict,
)
from surgery.sensitivity import accuracy_vs_flops, sensitivity  # noqa: F401,E402
from surgery.model_files import check_model_file, load_model_checked  # noqa: F401,E402
