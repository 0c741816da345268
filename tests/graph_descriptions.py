"""Random functional CNNs from a neutral description, buildable by either Keras generation.

A description is a JSON-able dict — ``blocks`` (a list of :data:`BLOCKS`), ``widths``,
``seed``, ``ratio``, ``policy``, ``input`` (:data:`INPUTS`: a fixed-size image, an image
of unknown height and width, or an image plus variable-length integer token ids through an
``Embedding``) — drawn by hypothesis (:data:`DESCRIPTIONS`). The ``norule`` block is a
layer no rule knows (a custom weighted layer, or a ``Lambda``), which must stop its
groups with a reason, never with an exception. :func:`inputs` gives a matching batch.
:func:`build` turns it into a model with the ``layers`` namespace and ``Model`` class of
tf-keras or of Keras 3, with the same layer names in both, so that a Keras 3 child process
(tests/keras3_graph_cases.py) can build exactly what tests/test_random_graphs.py builds
and the two analyses can be compared. :func:`randomize` gives weights that expose wrong
cuts; :func:`layer_weights` / :func:`set_layer_weights` move weights between the two
generations by layer name; :func:`group_positions` checks a plan against the groups.
"""
from collections import Counter

import numpy as np
from hypothesis import strategies as st

BLOCKS = ("conv", "depthwise", "bn_act", "residual", "concat", "pool", "separable", "norule")
INPUTS = ("fixed", "unknown", "tokens")
VOCAB = 20
SIZE = 12
POLICIES = ("aggregate", "intersection", "deepest", "depthwise")

DESCRIPTIONS = st.fixed_dictionaries({
    "blocks": st.lists(st.sampled_from(BLOCKS), min_size=2, max_size=7),
    "widths": st.lists(st.integers(3, 10), min_size=8, max_size=8),
    "seed": st.integers(0, 1000), "ratio": st.floats(0.34, 0.8),
    "policy": st.sampled_from(POLICIES), "input": st.sampled_from(INPUTS)})


def _mystery(L):
    """A weighted layer without a rule (its name is unknown to the registry)."""
    class Mystery(L.Layer):
        def build(self, shape):
            self.scale = self.add_weight(name="scale", shape=(shape[-1],),
                                         initializer="ones")

        def call(self, x):
            return x * self.scale + 0.1
    return Mystery


def build(L, Model, desc):
    """The model of ``desc`` built with layers namespace ``L`` and model class ``Model``;
    every layer with weights is named after its block (``b3_conv``), unweighted ones too
    where the layer API allows (``x + y`` is an operation in both generations)."""
    blocks, widths, kind_in = desc["blocks"], desc["widths"], desc.get("input", "fixed")
    side = None if kind_in == "unknown" else SIZE
    inp = L.Input((side, side, 3), name="image")
    x = L.Conv2D(widths[0], 3, padding="same", name="stem")(inp)
    for i, (kind, width) in enumerate(zip(blocks, widths[1:])):
        n = f"b{i}_"
        if kind == "conv":
            x = L.Conv2D(width, 1 + 2 * (i % 2), padding="same", name=n + "conv")(x)
        elif kind == "depthwise":
            x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=1 + i % 2,
                                  name=n + "dw")(x)
        elif kind == "bn_act":
            x = L.ReLU(6.0, name=n + "relu")(L.BatchNormalization(name=n + "bn")(x))
        elif kind == "residual":
            h = L.ReLU(name=n + "relu")(L.Conv2D(width, 1, name=n + "expand")(x))
            branch = L.Conv2D(x.shape[-1], 1, name=n + "project")(h)
            x = L.Add(name=n + "add")([x, L.BatchNormalization(name=n + "bn")(branch)]) \
                if i % 2 else x + branch
        elif kind == "concat":
            x = L.Concatenate(name=n + "cat")([x, L.Conv2D(width, 1, name=n + "side")(x)])
        elif kind == "pool":
            x = L.MaxPooling2D(2, padding="same", name=n + "max")(x) if i % 2 else \
                L.AveragePooling2D(2, padding="same", name=n + "avg")(x)
        elif kind == "separable":
            x = L.SeparableConv2D(width, 3, padding="same", name=n + "sep")(x)
        elif kind == "norule":
            x = _mystery(L)(name=n + "mystery")(x) if i % 2 else \
                L.Lambda(lambda t: t * 0.5, name=n + "lambda")(x)
    x = L.GlobalAveragePooling2D(name="gap")(L.Conv2D(5, 1, name="last")(x))
    if kind_in != "tokens":
        return Model(inp, L.Dense(3, name="classifier")(x))
    tokens = L.Input((None,), dtype="int32", name="tokens")
    t = L.Embedding(VOCAB, widths[0], name="embedding")(tokens)
    t = L.Dense(widths[1], activation="relu", name="token_dense")(t)
    t = L.GlobalAveragePooling1D(name="token_gap")(t)
    x = L.Concatenate(name="joined")([x, L.Dense(4, name="token_proj")(t)])
    return Model([inp, tokens], L.Dense(3, name="classifier")(x))


def inputs(desc, n=2):
    """A batch for the model of ``desc`` (image, plus token ids of a length the graph
    never saw)."""
    rng = np.random.default_rng(desc["seed"])
    x = rng.normal(size=(n, SIZE, SIZE, 3)).astype("float32")
    if desc.get("input") != "tokens":
        return x
    return [x, rng.integers(0, VOCAB, (n, 5)).astype("int32")]


def randomize(model, seed=0):
    """Random values for every weight that starts constant (BatchNormalization statistics,
    biases), variances and scales in [0.5, 1.5]; kernels keep their initialisation.
    Works for tf-keras and Keras 3 variables."""
    rng = np.random.default_rng(seed)
    values = []
    for w, value in zip(model.weights, model.get_weights()):
        name, dtype = w.name.split("/")[-1], value.dtype
        if "variance" in name or "gamma" in name:
            value = rng.uniform(0.5, 1.5, size=value.shape)
        elif "kernel" not in name or np.all(value == value.flat[0]):
            value = rng.normal(0.0, 0.2, size=value.shape)
        values.append(value.astype(dtype))
    model.set_weights(values)
    return model


def layer_weights(model) -> dict:
    """``{"layer/index": array}`` for every weight of every layer (an ``np.savez`` dict)."""
    return {f"{layer.name}/{i}": w for layer in model.layers
            for i, w in enumerate(layer.get_weights())}


def set_layer_weights(model, saved) -> None:
    """Give the layers of ``model`` the weights :func:`layer_weights` saved by name."""
    for layer in model.layers:
        count = len(layer.get_weights())
        if count:
            layer.set_weights([saved[f"{layer.name}/{i}"] for i in range(count)])


def chosen_groups(groups, seed) -> list:
    """The per-group ratios of a description: about 70% of its prunable groups."""
    rng = np.random.default_rng(seed)
    prunable = [g for g in groups if not g.skipped and g.size > 1]
    return [g.name for g in prunable if rng.random() < 0.7] or [prunable[0].name]


def group_summary(groups) -> list:
    """The groups as comparable JSON: producers, size, channel rows, skipped or not."""
    return sorted([g.producers, g.size, [g.channels[m] for m in g.producers],
                   bool(g.skipped)] for g in groups)


def check_group_positions(groups, deletions) -> None:
    """Every member of a group loses the same group channels. A producer may hold several
    channels per group channel (after a depthwise multiplier) or be split between groups
    (a Concatenate added to it), so compare group positions, not channel indices; a
    producer in exactly one group must lose no channel outside them."""
    count = Counter(m for g in groups for m in g.producers)
    for g in groups:
        lost = []
        for m in g.producers:
            gone = set(deletions.get(m, ()))
            lost.append({i for i, rows in enumerate(g.channels[m]) if set(rows) <= gone})
            if count[m] == 1:
                assert gone == set(g.member_channels(m, lost[-1])), (m, gone)
        assert all(positions == lost[0] for positions in lost), (g.producers, lost)
