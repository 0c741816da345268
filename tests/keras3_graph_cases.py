"""Random graphs on Keras 3, run in a child process by tests/test_keras3_random_graphs.py.

``python tests/keras3_graph_cases.py IN.json OUT.json`` imports Keras 3 first (backend from
``KERAS_BACKEND``), then ``surgery``. ``IN.json`` lists graphs: a description
(tests/graph_descriptions.py), the ``per_layer`` ratios the parent chose on tf-keras, and an
``.npz`` of the tf-keras model's weights by layer name. For each graph it builds the same
model with Keras 3 layers, gives it those weights, and reports the channel groups, the
plan's deletions, the verify error, how far zeroing moved the outputs and whether every
group member lost the same group positions.
"""
import json
import os
import sys
import traceback

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # DESIGN.md: oneDNN segfaults on odd widths

import numpy as np  # noqa: E402
import keras  # noqa: E402  (Keras 3 first: the process has chosen before `surgery`)


def run_graph(graph):
    import surgery
    from surgery.engine.zeroing import max_relative_difference
    from graph_descriptions import (build, check_group_positions, group_summary, inputs,
                                    set_layer_weights)

    desc = graph["desc"]
    keras.backend.clear_session()
    model = build(keras.layers, keras.Model, desc)
    set_layer_weights(model, np.load(graph["weights"]))
    groups = surgery.channel_groups(model)
    p = surgery.plan(model, ratio=0.0, policy=desc["policy"], per_layer=graph["ratios"])
    pruned = surgery.apply(model, p)
    x = inputs(desc)
    try:
        check_group_positions(groups, p.deletions)
        positions = "ok"
    except AssertionError as err:
        positions = f"mismatch: {err}"
    zeroed = surgery.zero_channels(model, p.deletions)
    shifted = {name: sorted((c + 1) % model.get_layer(name).output.shape[-1]
                            for c in channels) for name, channels in p.deletions.items()}
    try:  # the oracle must see a wrong cut (or the cut be refused)
        wrong = surgery.verify(model, surgery.apply(model, surgery.PrunePlan.from_deletions(shifted, p.groups)), p, x)
    except surgery.SurgeryError as err:
        wrong = f"refused: {err}"
    return {"wrong": wrong, "groups": group_summary(groups), "deletions": p.deletions,
            "verify": surgery.verify(model, pruned, p, x),
            "moved": max_relative_difference(model(x), zeroed(x)),
            "positions": positions, "type": type(pruned).__module__,
            "params": [model.count_params(), pruned.count_params()]}


def main(source, target):
    with open(source) as f:
        graphs = json.load(f)
    results = []
    for graph in graphs:
        try:
            results.append(run_graph(graph))
        except Exception:  # noqa: BLE001 — reported per graph to the parent
            results.append({"error": traceback.format_exc()[-3000:]})
    with open(target, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [os.path.dirname(here), here]
    main(sys.argv[1], sys.argv[2])
