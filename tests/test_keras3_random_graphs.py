"""The random graphs of tests/test_random_graphs.py on Keras 3 (TensorFlow backend).

Hypothesis draws a fixed, derandomized set of graph descriptions
(tests/graph_descriptions.py). This process builds each with tf-keras, analyses it,
chooses the groups to prune and saves the weights by layer name; one Keras 3 child process
(tests/keras3_graph_cases.py) builds the same graphs with Keras 3 layers and those
weights. Per graph: the Keras 3 channel groups equal the tf-keras ones (same producers,
sizes and channel positions), the plan deletes the same channels, the cut is exact
(verify ≤ 1e-5 in float32), zeroing moved the outputs, every group member lost the
same group positions, and a plan shifted by one channel is caught by the oracle.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings

import surgery
from surgery import keras
from graph_descriptions import (DESCRIPTIONS, build, chosen_groups, group_summary,
                                layer_weights, randomize)

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = 20


def drawn(count):
    """``count`` descriptions drawn by hypothesis, the same on every run."""
    found = []

    @settings(max_examples=count, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(desc=DESCRIPTIONS)
    def collect(desc):
        found.append(desc)

    collect()
    return found[:count]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    out = tmp_path_factory.mktemp("keras3_graphs")
    graphs, expected = [], []
    for i, desc in enumerate(drawn(EXAMPLES)):
        keras.backend.clear_session()
        model = randomize(build(keras.layers, keras.Model, desc), seed=desc["seed"])
        groups = surgery.channel_groups(model)
        ratios = {name: desc["ratio"] for name in chosen_groups(groups, desc["seed"])}
        p = surgery.plan(model, ratio=0.0, policy=desc["policy"], per_layer=ratios)
        weights = str(out / f"graph{i}.npz")
        np.savez(weights, **layer_weights(model))
        graphs.append({"desc": desc, "ratios": ratios, "weights": weights})
        expected.append({"groups": json.loads(json.dumps(group_summary(groups))),
                         "deletions": p.deletions})
    source, target = out / "graphs.json", out / "results.json"
    source.write_text(json.dumps(graphs))
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["KERAS_BACKEND"] = "tensorflow"
    proc = subprocess.run([sys.executable, os.path.join(HERE, "keras3_graph_cases.py"),
                           str(source), str(target)], capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0 and target.exists(), proc.stderr[-3000:]
    return graphs, expected, json.loads(target.read_text())


@pytest.mark.parametrize("index", range(EXAMPLES))
def test_keras3_random_graph_is_pruned_exactly_like_keras2(graphs, index):
    graph, expected, result = (part[index] for part in graphs)
    assert "error" not in result, f"{graph['desc']}\n{result.get('error')}"
    assert result["type"].startswith("keras.src.models"), result["type"]
    assert result["groups"] == expected["groups"], graph["desc"]
    assert result["deletions"] == expected["deletions"], graph["desc"]
    assert result["verify"] <= 1e-5, (graph["desc"], result["verify"])
    assert result["positions"] == "ok", result["positions"]
    assert result["params"][1] < result["params"][0]
    assert result["moved"] > 1e-3, f"zeroing moved the outputs by {result['moved']:.3g} only"
    wrong = result["wrong"]
    assert isinstance(wrong, str) or wrong > 1e-3, "the oracle must catch a wrong cut"
