"""Small transformers written once for both Keras generations (the module ``K`` is
tf-keras or Keras 3): a ViT (patch ``Conv2D``, pre-norm blocks LayerNormalization →
MultiHeadAttention → Add → LayerNormalization → Dense(gelu) → Dense → Add, a classifier)
and a BERT-style encoder over variable-length token ids (``Embedding``, post-norm blocks).
Weights are random with non-zero biases, so zeroing a head or a channel moves the outputs.
tests/test_transformers.py runs them on tf-keras, tests/keras3_transformer_cases.py on
Keras 3 (each backend in its own process).
"""
import numpy as np

HEADS, KEY_DIM, WIDTH, MLP = 4, 8, 16, 32


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    model.set_weights([(w + rng.normal(0, 0.2, w.shape)).astype(w.dtype)
                       for w in model.get_weights()])
    return model


def vit(K, size=16, patch=4, blocks=2, classes=5, channels=3, norm="layer"):
    """``norm``: ``"layer"`` (mean-centred: the hidden width stays), ``"rms"`` (Keras 3's
    RMSNormalization) or ``None`` (no norms): with either, the hidden width is one
    prunable channel group (the patch conv, every attention output and MLP down)."""
    L = K.layers

    def normed(name, t):
        if norm is None:
            return t
        make = L.LayerNormalization if norm == "layer" else L.RMSNormalization
        return make(name=name)(t)
    x = K.Input((size, size, channels))
    h = L.Conv2D(WIDTH, patch, strides=patch, name="patch")(x)
    h = L.Reshape(((size // patch) ** 2, WIDTH))(h)
    for i in range(blocks):
        a = normed(f"ln{i}a", h)
        a = L.MultiHeadAttention(HEADS, KEY_DIM, name=f"mha{i}")(a, a)
        h = L.Add()([h, a])
        m = normed(f"ln{i}b", h)
        m = L.Dense(MLP, activation="gelu", name=f"mlp{i}_up")(m)
        h = L.Add()([h, L.Dense(WIDTH, name=f"mlp{i}_down")(m)])
    h = L.GlobalAveragePooling1D()(normed("ln_out", h))
    return _randomize(K.Model(x, L.Dense(classes, name="head")(h), name="vit"))


#: the producers of the hidden width of :func:`vit` without mean-centred norms
HIDDEN = ["patch", "mha0", "mlp0_down", "mha1", "mlp1_down"]


def plant_dead_units(model, hidden=True):
    """Make head 1 of ``mha0``, MLP units 0-7 of ``mlp0_up`` and (with ``hidden``) hidden
    channels 0-2 (every producer of the residual stream) contribute nothing: their weights
    in are zero. Returns the plan that removes exactly them, as ``(deletions, groups,
    units)``."""
    mha = model.get_layer("mha0")
    w = mha.get_weights()
    for k in (0, 2, 4):                      # query, key, value kernels (width, heads, dim)
        w[k][:, 1, :] = 0
        w[k + 1][1] = 0                      # and biases (heads, dim)
    w[6][1] = 0                              # output kernel (heads, dim, width)
    mha.set_weights(w)
    up = model.get_layer("mlp0_up")
    kernel, bias = up.get_weights()
    kernel[:, :8], bias[:8] = 0, 0
    up.set_weights([kernel, bias])
    if not hidden:
        return {"mlp0_up": list(range(8))}, [["mlp0_up"]], {"mha0": {"heads": [1]}}
    hidden = [0, 1, 2]
    for name in HIDDEN:
        layer = model.get_layer(name)
        w = layer.get_weights()
        w[-2][..., hidden], w[-1][..., hidden] = 0, 0   # output kernel columns and bias
        layer.set_weights(w)
    deletions = dict({name: hidden for name in HIDDEN}, mlp0_up=list(range(8)))
    return deletions, [HIDDEN, ["mlp0_up"]], {"mha0": {"heads": [1]}}


def bert(K, vocab=40, blocks=2, classes=3):
    L = K.layers
    x = K.Input((None,), dtype="int32")
    h = L.LayerNormalization(name="ln_emb")(L.Embedding(vocab, WIDTH, name="emb")(x))
    for i in range(blocks):
        a = L.MultiHeadAttention(HEADS, KEY_DIM, name=f"mha{i}")(h, h)
        h = L.LayerNormalization(name=f"ln{i}a")(L.Add()([h, a]))
        m = L.Dense(MLP, activation="gelu", name=f"ffn{i}_up")(h)
        m = L.Dense(WIDTH, name=f"ffn{i}_down")(m)
        h = L.LayerNormalization(name=f"ln{i}b")(L.Add()([h, m]))
    h = L.GlobalAveragePooling1D()(h)
    return _randomize(K.Model(x, L.Dense(classes, name="head")(h), name="bert"))


def inputs(case, dtype, n=3, seed=0):
    rng = np.random.default_rng(seed)
    if case == "bert":
        return rng.integers(0, 40, (n, 7)).astype("int32")
    return rng.normal(size=(n, 16, 16, 3)).astype(dtype)


BUILDERS = {"vit": vit, "bert": bert}


def _loss(logits, y) -> float:
    """Summed sparse cross-entropy from logits (what ``taylor`` differentiates)."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].sum())


def taylor_by_differences(model, layer_name, x, y, eps):
    """Each head's first-order loss change when its value slices (the weights zeroed to
    remove it) are scaled by ``1 ± eps``: ``|dL/dt|`` by central differences."""
    layer = model.get_layer(layer_name)
    weights = layer.get_weights()
    scores = []
    for head in range(weights[4].shape[-2]):
        losses = []
        for sign in (1, -1):
            changed = [w.copy() for w in weights]
            changed[4][:, head, :] *= 1 + sign * eps   # value kernel (model_dim, heads, dim)
            changed[5][head, :] *= 1 + sign * eps      # value bias (heads, dim)
            layer.set_weights(changed)
            losses.append(_loss(to_numpy(model(x, training=False)), y))
        layer.set_weights(weights)
        scores.append(abs(losses[0] - losses[1]) / (2 * eps))
    return np.array(scores)


def to_numpy(value):
    if hasattr(value, "detach"):
        value = value.detach().cpu()
    return np.asarray(value, np.float64)


def run_case(K, surgery, case, dtype, modes=("heads", "both", "taylor")):
    """Plan at ratio 0.5 in each of ``modes`` (``heads``: whole heads; ``both``: heads
    and head widths; ``taylor``: heads by Taylor scores), apply, compare with the zeroed
    original; and the Taylor head scores of ``mha0`` with central differences. Returns the
    figures the tests assert on."""
    from surgery.engine.graph import resolve
    from surgery.engine.zeroing import max_relative_difference
    from surgery.pruning.criteria.units import unit_scores

    model = BUILDERS[case](K)
    x = inputs(case, dtype)
    y = np.arange(len(x)) % 3
    options = {"heads": {}, "both": {"head_dims": True},
               "taylor": {"criterion": "taylor", "data": (x, y)}}
    result = {}
    reference = to_numpy(model(x, training=False))
    for name in modes:
        plan = surgery.plan(model, ratio=0.5, **options[name])
        pruned = surgery.apply(model, plan)
        zeroed = to_numpy(surgery.zero_channels(model, plan.deletions, plan.units)(x))
        result[name] = dict(
            verify=max_relative_difference(zeroed, pruned(x, training=False)),
            moved=max_relative_difference(reference, zeroed),
            units=plan.units, deletions=plan.deletions,
            params=[int(model.count_params()), int(pruned.count_params())],
            flops=[int(surgery.count_flops(model)), int(surgery.count_flops(pruned))],
            heads=[int(pruned.get_layer(f"mha{i}").get_config()["num_heads"]) for i in range(2)],
            summary=plan.summary())
    eps = 1e-5 if dtype == "float64" else 1e-2
    result["taylor_scores"] = unit_scores(resolve(model), [("mha0", "heads")], "taylor",
                                          (x, y))["mha0:heads"].tolist()
    result["taylor_differences"] = taylor_by_differences(model, "mha0", x, y, eps).tolist()
    return result
