"""Property-based: random functional CNNs from conv / depthwise / BN / activation / add /
concat / pooling blocks, random groups pruned, outputs equal to the zeroed original."""
from collections import Counter

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

import surgery
from surgery import keras
from surgery.engine.zeroing import max_relative_difference
from equivalence import randomize_weights

L = keras.layers
BLOCKS = ("conv", "depthwise", "bn_act", "residual", "concat", "pool", "separable")


def build(blocks, widths, seed):
    inp = L.Input((12, 12, 3))
    x = L.Conv2D(widths[0], 3, padding="same")(inp)
    for i, (kind, width) in enumerate(zip(blocks, widths[1:])):
        if kind == "conv":
            x = L.Conv2D(width, 1 + 2 * (i % 2), padding="same")(x)
        elif kind == "depthwise":
            x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=1 + i % 2)(x)
        elif kind == "bn_act":
            x = L.ReLU(6.0)(L.BatchNormalization()(x))
        elif kind == "residual":
            branch = L.Conv2D(x.shape[-1], 1)(L.ReLU()(L.Conv2D(width, 1)(x)))
            x = L.Add()([x, L.BatchNormalization()(branch)]) if i % 2 else x + branch
        elif kind == "concat":
            x = L.Concatenate()([x, L.Conv2D(width, 1)(x)])
        elif kind == "pool":
            x = L.MaxPooling2D(padding="same")(x) if i % 2 else \
                L.AveragePooling2D(padding="same")(x)
        elif kind == "separable":
            x = L.SeparableConv2D(width, 3, padding="same")(x)
    x = L.GlobalAveragePooling2D()(L.Conv2D(5, 1)(x))
    return randomize_weights(keras.Model(inp, L.Dense(3)(x)), seed=seed)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(st.sampled_from(BLOCKS), min_size=2, max_size=7),
       widths=st.lists(st.integers(3, 10), min_size=8, max_size=8),
       seed=st.integers(0, 1000), ratio=st.floats(0.34, 0.8),
       policy=st.sampled_from(["aggregate", "intersection", "deepest", "depthwise"]))
def test_random_graph_pruning_is_exact(blocks, widths, seed, ratio, policy):
    keras.backend.clear_session()
    model = build(blocks, widths, seed)
    rng = np.random.default_rng(seed)
    analysed = surgery.channel_groups(model)
    groups = [g for g in analysed if not g.skipped and g.size > 1]
    chosen = [g.name for g in groups if rng.random() < 0.7] or [groups[0].name]
    ratios = {name: ratio for name in chosen}
    p = surgery.plan(model, ratio=0.0, policy=policy, per_layer=ratios)
    pruned = surgery.apply(model, p)
    x = rng.normal(size=(2, 12, 12, 3)).astype("float32")
    assert surgery.verify(model, pruned, p, x) <= 1e-5
    # every member of a group loses the same group channels. A producer may hold several
    # channels per group channel (after a depthwise multiplier) or be split between groups
    # (a Concatenate added to it), so compare group positions, not channel indices; a
    # producer in exactly one group must lose no channel outside them
    count = Counter(m for g in analysed for m in g.producers)
    for g in analysed:
        lost = []
        for m in g.producers:
            gone = set(p.deletions.get(m, ()))
            lost.append({i for i, rows in enumerate(g.channels[m]) if set(rows) <= gone})
            if count[m] == 1:
                assert gone == set(g.member_channels(m, lost[-1])), (m, gone)
        assert all(positions == lost[0] for positions in lost), (g.producers, lost)
    assert p.deletions and pruned.count_params() < model.count_params()
    # the zeroing must move the outputs, or the check above proves nothing
    moved = max_relative_difference(model(x), surgery.zero_channels(model, p.deletions)(x))
    assert moved > 1e-3, f"zeroing {p.deletions} moved the outputs by {moved:.3g} only"
