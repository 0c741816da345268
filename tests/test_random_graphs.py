"""Property-based: random functional CNNs from conv / depthwise / BN / activation / add /
concat / pooling blocks and layers without a rule, on fixed-size or unknown-size images or
images plus variable-length token ids (tests/graph_descriptions.py), random groups pruned,
outputs equal to the zeroed original. tests/test_keras3_random_graphs.py runs the same descriptions on
Keras 3."""
from hypothesis import HealthCheck, given, settings

import surgery
from surgery import keras
from surgery.engine.zeroing import max_relative_difference
from graph_descriptions import (DESCRIPTIONS, build, check_group_positions, chosen_groups,
                                inputs, randomize)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(desc=DESCRIPTIONS)
def test_random_graph_pruning_is_exact(desc):
    keras.backend.clear_session()
    model = randomize(build(keras.layers, keras.Model, desc), seed=desc["seed"])
    analysed = surgery.channel_groups(model)
    ratios = {name: desc["ratio"] for name in chosen_groups(analysed, desc["seed"])}
    p = surgery.plan(model, ratio=0.0, policy=desc["policy"], per_layer=ratios)
    pruned = surgery.apply(model, p)
    x = inputs(desc)
    assert surgery.verify(model, pruned, p, x) <= 1e-5
    check_group_positions(analysed, p.deletions)
    assert p.deletions and pruned.count_params() < model.count_params()
    # the zeroing must move the outputs, or the check above proves nothing
    moved = max_relative_difference(model(x), surgery.zero_channels(model, p.deletions)(x))
    assert moved > 1e-3, f"zeroing {p.deletions} moved the outputs by {moved:.3g} only"
