"""Attention-free ViT blocks (issue 30), in Keras 3 (TensorFlow backend), run in a child
process by tests/test_attention_free.py.

A keras-hub ``ViTEncoder`` block may lose all its heads: its attention then adds only its
output bias to the residual stream, so with every head's value weights zero (the zeroing
oracle) the block computes what the attention-free block computes.

``python tests/keras3_attention_free_cases.py run OUT`` builds tests/keras3_depth_cases.py's
ViT (3 blocks of 4 heads, hidden 16, MLP 32, random weights) and prints one JSON line:

* ``oracle``: block 2's four heads cut: ``verify`` against the zeroed model, how far the
  zeroing moved the outputs (``moved``), and ``wrong``: block 1 emptied instead, checked
  against block 2's zeroing; the cut encoder's block widths, parameters and FLOPs
  (measured, and as the parameter estimator predicted);
* ``ranking``: block 3's heads made dead (query, key, value and output kernels and
  biases but the output bias zero), then ``plan(params_target=<their share>)`` by weight
  norm and by activation: which units it removes;
* ``micro``: the latency tables' grid of a block's heads (it includes 0), the blocks
  and ``MultiHeadAttention`` layers of that block's micro-models at 4 heads and at 0, and
  whether two identical blocks at 2 heads share one micro-model (``shared``: and one block
  at 2 and at 1 head do not);
* the cut model saved as ``OUT/attention_free.keras`` (``load`` reloads it in a fresh
  process: ``python tests/keras3_attention_free_cases.py load OUT``), exported to ONNX and
  run in ONNX Runtime (``onnx``: the largest difference from Keras).
"""
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import keras  # noqa: E402

from keras3_depth_cases import ENC, _model  # noqa: E402
from keras3_hub_cases import _outputs  # noqa: E402


def _emptying(block: int):
    import surgery

    return surgery.PrunePlan.from_deletions(
        {}, [], units={ENC: {f"transformer_block_{block}/heads": [0, 1, 2, 3]}})


def _oracle(model, x):
    import surgery
    from surgery.cost.params import ParamsEstimator
    from surgery.engine.graph import resolve
    from surgery.engine.zeroing import max_relative_difference
    from surgery.pruning.planning import PlanSpec, Ranking

    plan = _emptying(2)
    cut = surgery.apply(model, plan)
    zeroed = surgery.zero_channels(model, plan.deletions, plan.units)
    ranking = Ranking(resolve(model), PlanSpec(ratio=0.0))
    estimator = ParamsEstimator(ranking.graph, ranking.width_groups(), ranking.unit_groups())
    return dict(
        verify=surgery.verify(model, cut, plan, x),
        moved=max_relative_difference(_outputs(model, x), _outputs(zeroed, x)),
        wrong=surgery.verify(model, surgery.apply(model, _emptying(1)), plan, x),
        blocks=[b["num_heads"] for b in cut.get_layer(ENC).get_config()["blocks"]],
        params=[model.count_params(), cut.count_params(),
                float(estimator.cost_of(plan.removed))],
        flops=[surgery.count_flops(model), surgery.count_flops(cut)]), cut


def _kill_block_3(model):
    mha = model.get_layer(ENC).encoder_layers[2].mha
    for dense in (mha._query_dense, mha._key_dense, mha._value_dense):
        dense.set_weights([np.zeros_like(w) for w in dense.get_weights()])
    kernel, bias = mha._output_dense.get_weights()
    mha._output_dense.set_weights([np.zeros_like(kernel), bias])


def _ranking(x):
    import surgery

    model, _ = _model()
    _kill_block_3(model)
    share = 1 - surgery.apply(model, _emptying(3)).count_params() / model.count_params()
    out = {}
    for criterion in ("l1", "activation"):
        p = surgery.plan(model, params_target=share - 1e-7, criterion=criterion, data=x)
        out[criterion] = {f"{layer}:{a}": v for layer, axes in p.units.items()
                          for a, v in axes.items() if v}
    return out


def _micro(model):
    from surgery.cost import micro
    from surgery.cost.table import _unit_grid
    from surgery.engine.graph import resolve
    from surgery.engine.rules import rule_for

    graph = resolve(model)
    node = next(n for n in graph.calls() if n.layer.name == ENC)
    rule, axis = rule_for(node.info), "transformer_block_2/heads"
    counts = {}
    for kept in (4, 0):  # the block alone (the encoder's other blocks removed)
        _, build = micro.unit_entry(node.info, rule, {axis: kept}, graph.adapter.new_layer)
        x, y = build(keras, kept)
        encoder = keras.Model(x, y).layers[-1]
        counts[kept] = [len(encoder.encoder_layers), sum(
            isinstance(layer, keras.layers.MultiHeadAttention)
            for block in encoder.encoder_layers for layer in block._flatten_layers())]
    sig = {f"{b}:{k}": micro.unit_entry(node.info, rule, {f"transformer_block_{b}/heads": k},
                                       graph.adapter.new_layer)[0]
           for b, k in ((2, 2), (3, 2), (3, 1))}
    return dict(grid=_unit_grid(rule, node.info, axis, 4), blocks_and_attention=counts,
                shared=[sig["2:2"] == sig["3:2"], sig["3:2"] == sig["3:1"]])


def run(out):
    import surgery

    model, x = _model()
    report = {}
    report["oracle"], cut = _oracle(model, x)
    report["ranking"] = _ranking(x)
    report["micro"] = _micro(model)
    path = os.path.join(out, "attention_free.keras")
    cut.save(path)
    np.save(os.path.join(out, "x.npy"), x)
    np.save(os.path.join(out, "y.npy"), _outputs(cut, x))
    surgery.export_onnx(cut, os.path.join(out, "attention_free.onnx"), verify_with=x)
    onnx_y = surgery.onnx_predict(os.path.join(out, "attention_free.onnx"), x)
    report["onnx"] = float(np.max(np.abs(np.asarray(onnx_y) - _outputs(cut, x))))
    print("RESULT " + json.dumps(report, default=str))


def load(out):
    import surgery  # noqa: F401  (registers surgery>ViTEncoder)

    reloaded = keras.saving.load_model(os.path.join(out, "attention_free.keras"))
    x, y = np.load(os.path.join(out, "x.npy")), np.load(os.path.join(out, "y.npy"))
    blocks = reloaded.get_layer(ENC).get_config()["blocks"]
    print("RESULT " + json.dumps(dict(
        reloaded=float(np.max(np.abs(_outputs(reloaded, x) - y))),
        blocks=[b["num_heads"] for b in blocks])))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    {"run": run, "load": load}[sys.argv[1]](sys.argv[2])
