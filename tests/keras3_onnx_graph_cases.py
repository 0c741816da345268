"""Keras's LayerNormalization chains fused into ONNX ``LayerNormalization`` nodes by
``surgery.export_onnx`` (Keras 3, TensorFlow backend), run in a child process by
tests/test_onnx_graph.py. ``python tests/keras3_onnx_graph_cases.py OUT`` exports, for each
case, a model by default and at ``opset=15`` and prints one JSON line: per case and export,
the ``LayerNormalization`` and ``GlobalAveragePool`` nodes in the file, its opset, and the
largest difference of ONNX Runtime's outputs from Keras's.
"""
import collections
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import keras  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from keras3_hub_cases import _randomize  # noqa: E402


def _norm(center: bool, scale: bool):
    """A LayerNormalization over (10, 16) tokens with random gains and offsets."""
    x = keras.Input((10, 16))
    layer = keras.layers.LayerNormalization(center=center, scale=scale, name="ln")
    model = keras.Model(x, keras.layers.Dense(4)(layer(x)))
    rng = np.random.default_rng(0)
    layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32")
                       for w in layer.get_weights()])
    return model, rng.normal(size=(4, 10, 16)).astype("float32")


def _vit():
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = _randomize(keras_hub.models.ViTBackbone(
        image_shape=(16, 16, 1), patch_size=4, num_layers=2, num_heads=2, hidden_dim=16,
        mlp_dim=32, name="vit"))
    x = keras.Input((16, 16, 1))
    model = keras.Model(x, keras.layers.Dense(3)(backbone(x)[:, 0]))
    return model, np.random.default_rng(1).random((4, 16, 16, 1), np.float32)


def main(out: str) -> dict:
    import onnx
    import surgery

    cases = {"scale_center": lambda: _norm(True, True), "scale": lambda: _norm(False, True),
             "center": lambda: _norm(True, False), "neither": lambda: _norm(False, False),
             "vit": _vit}
    report = {}
    for name, make in cases.items():
        model, x = make()
        expected = model.predict(x, verbose=0)
        for opset in (None, 15):
            path = surgery.export_onnx(model, os.path.join(out, f"{name}_{opset}.onnx"),
                                       opset=opset)
            proto = onnx.load(path)
            ops = collections.Counter(n.op_type for n in proto.graph.node)
            report[f"{name}/{opset or 'default'}"] = dict(
                layer_norms=ops["LayerNormalization"], pools=ops["GlobalAveragePool"],
                opset=max(e.version for e in proto.opset_import if e.domain in ("", "ai.onnx")),
                error=float(np.abs(surgery.onnx_predict(path, x) - expected).max()))
    return report


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1])), flush=True)
