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


def vit(K, size=16, patch=4, blocks=2, classes=5):
    L = K.layers
    x = K.Input((size, size, 3))
    h = L.Conv2D(WIDTH, patch, strides=patch, name="patch")(x)
    h = L.Reshape(((size // patch) ** 2, WIDTH))(h)
    for i in range(blocks):
        a = L.LayerNormalization(name=f"ln{i}a")(h)
        a = L.MultiHeadAttention(HEADS, KEY_DIM, name=f"mha{i}")(a, a)
        h = L.Add()([h, a])
        m = L.LayerNormalization(name=f"ln{i}b")(h)
        m = L.Dense(MLP, activation="gelu", name=f"mlp{i}_up")(m)
        h = L.Add()([h, L.Dense(WIDTH, name=f"mlp{i}_down")(m)])
    h = L.GlobalAveragePooling1D()(L.LayerNormalization(name="ln_out")(h))
    return _randomize(K.Model(x, L.Dense(classes, name="head")(h), name="vit"))


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
