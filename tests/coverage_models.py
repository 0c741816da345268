"""The layer-rule coverage models, written once for both Keras generations.

Every builder takes a :class:`Stack` — the Keras module (tf-keras or Keras 3), its
element-wise operations (``tf.nn`` functions or ``keras.ops``) and ConvNeXt's
``LayerScale`` — and returns a :class:`Case`: the model with random weights, an input,
the layers that must lose channels, and the tolerance. tests/test_rules_coverage.py runs
them on tf-keras (with extra assertions per case), tests/keras3_coverage_cases.py on
Keras 3 in a child process. Models are built in the current ``floatx`` (float64 in the
tests), except 3-D pooling, which TensorFlow has in float32 only.
"""
import dataclasses

import numpy as np

from graph_descriptions import randomize

TOL = 1e-8


@dataclasses.dataclass
class Stack:
    keras: object
    ops: dict
    layer_scale: type

    @property
    def L(self):
        return self.keras.layers


@dataclasses.dataclass
class Case:
    model: object
    x: object
    expect: tuple = ()
    tol: float = TOL


def normal(*shape, seed=0, dtype="float64"):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def make(K, inputs, outputs, seed=0):
    return randomize(K.keras.Model(inputs, outputs), seed=seed)


def head(K, x, units=3):
    """A classifier whose units reach the output and are never pruned."""
    return K.L.Dense(units, name="classifier")(x)


# ---- recurrent layers ------------------------------------------------------------------

RNNS = {
    "lstm": lambda L, u, **k: L.LSTM(u, **k),
    "gru": lambda L, u, **k: L.GRU(u, reset_after=True, **k),
    "gru_v1": lambda L, u, **k: L.GRU(u, reset_after=False, **k),
    "simple": lambda L, u, **k: L.SimpleRNN(u, **k),
}


def recurrent_stacked(K, kind):
    L, rnn = K.L, RNNS[kind]
    inp = L.Input((5, 4))
    x = rnn(L, 8, return_sequences=True, name="rnn1")(inp)
    x = rnn(L, 6, return_sequences=True, name="rnn2")(x)
    x = rnn(L, 5, name="rnn3")(x)
    return Case(make(K, inp, head(K, L.Dense(7, name="fc")(x))), normal(3, 5, 4),
                ("rnn1", "rnn2", "rnn3", "fc"))


def recurrent_time_distributed_dense(K, kind):
    L = K.L
    inp = L.Input((6, 3))
    x = L.Dense(6, name="embed")(inp)                  # Dense per time step
    x = RNNS[kind](L, 7, return_sequences=True, name="rnn")(x)
    x = L.Dense(4, name="per_step")(x)
    return Case(make(K, inp, head(K, L.Flatten()(x))), normal(2, 6, 3),
                ("embed", "rnn", "per_step"))


def bidirectional(K, merge_mode):
    L = K.L
    inp = L.Input((5, 4))
    x = L.Conv1D(6, 2, padding="same", name="conv")(inp)
    x = L.Bidirectional(L.LSTM(6, return_sequences=True), merge_mode=merge_mode,
                        name="bi")(x)
    x = L.Bidirectional(L.LSTM(4), merge_mode=merge_mode, name="bi2")(x)
    return Case(make(K, inp, head(K, x)), normal(3, 5, 4), ("conv", "bi", "bi2"))


def time_distributed(K):
    L = K.L
    inp = L.Input((3, 8, 8, 2))
    x = L.TimeDistributed(L.Conv2D(6, 3, padding="same"), name="td_conv")(inp)
    x = L.TimeDistributed(L.BatchNormalization(), name="td_bn")(x)
    x = L.TimeDistributed(L.MaxPooling2D(2), name="td_pool")(x)
    x = L.TimeDistributed(L.Conv2D(5, 3), name="td_conv2")(x)
    x = L.TimeDistributed(L.GlobalAveragePooling2D(), name="td_gap")(x)
    x = L.TimeDistributed(L.Dense(6), name="td_dense")(x)
    x = L.LSTM(4, name="rnn")(x)
    return Case(make(K, inp, head(K, x)), normal(2, 3, 8, 8, 2),
                ("td_conv", "td_conv2", "td_dense", "rnn"))


# ---- element-wise operations (tf-keras TFOpLambda, Keras 3 operations) -----------------

OPS = {
    "hard_swish": lambda o, x: x * o["relu6"](x + 3.0) * (1.0 / 6.0),
    "swish_sigmoid": lambda o, x: x * o["sigmoid"](x),
    "swish": lambda o, x: o["swish"](x),
    "silu": lambda o, x: o["silu"](x),
    "relu": lambda o, x: o["relu"](x),
}


def single_input_op(K, op):
    L = K.L
    inp = L.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", name="producer")(inp)
    x = L.Conv2D(5, 3, name="consumer")(OPS[op](K.ops, x))
    return Case(make(K, inp, head(K, L.GlobalAveragePooling2D()(x))), normal(2, 8, 8, 3),
                ("producer", "consumer"))


def scaled_residual(K):
    L = K.L
    inp = L.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", name="stem")(inp)
    y = L.Conv2D(6, 3, padding="same", name="branch")(K.ops["relu"](x))
    x = x + 0.5 * y
    y = L.Conv2D(6, 1, name="branch2")(x)
    x = K.ops["add"](x, y * 0.25)
    x = L.Conv2D(5, 3, name="consumer")(x)
    return Case(make(K, inp, head(K, L.GlobalAveragePooling2D()(x))), normal(2, 8, 8, 3),
                ("stem", "branch", "branch2", "consumer"))


def non_zero_preserving_op(K, op):
    """Known gap (xfail): f(0) != 0 between a producer and a consumer."""
    L = K.L
    inp = L.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", name="producer")(inp)
    x = L.Activation("sigmoid")(x) if op == "sigmoid" else x + 1.0
    x = L.Conv2D(4, 3, name="consumer")(x)
    return Case(make(K, inp, head(K, L.GlobalAveragePooling2D()(x))), normal(2, 8, 8, 3),
                ("producer",))


# ---- Permute ---------------------------------------------------------------------------

def permute(K, dims=(2, 1, 3)):
    """``dims=(3, 1, 2)`` moves the channel axis: the producer is skipped ("move")."""
    L = K.L
    inp = L.Input((8, 6, 3))
    x = L.Conv2D(6, 3, padding="same", name="producer")(inp)
    x = L.Permute(dims, name="move")(x)
    x = L.Flatten()(L.Conv2D(4, 3 if dims[-1] == 3 else 1, name="consumer")(x))
    return Case(make(K, inp, head(K, x)), normal(2, 8, 6, 3), ("producer", "consumer"))


# ---- spatial layers --------------------------------------------------------------------

SPATIAL = {
    1: [lambda L: L.UpSampling1D(2), lambda L: L.ZeroPadding1D((1, 2)),
        lambda L: L.Cropping1D((1, 1)), lambda L: L.MaxPooling1D(2),
        lambda L: L.AveragePooling1D(2, padding="same"), lambda L: L.GlobalMaxPooling1D(),
        lambda L: L.GlobalAveragePooling1D()],
    2: [lambda L: L.UpSampling2D(2), lambda L: L.UpSampling2D(2, interpolation="bilinear"),
        lambda L: L.ZeroPadding2D(((1, 0), (2, 1))),
        lambda L: L.Cropping2D(((1, 2), (0, 1))),
        lambda L: L.MaxPooling2D(2), lambda L: L.AveragePooling2D(3, 1, padding="same"),
        lambda L: L.GlobalMaxPooling2D(), lambda L: L.GlobalAveragePooling2D(keepdims=True)],
    3: [lambda L: L.UpSampling3D(2), lambda L: L.ZeroPadding3D(1),
        lambda L: L.Cropping3D(((1, 0), (0, 1), (1, 1))), lambda L: L.MaxPooling3D(2),
        lambda L: L.AveragePooling3D(2, padding="same"), lambda L: L.GlobalMaxPooling3D(),
        lambda L: L.GlobalAveragePooling3D()],
}
SPATIAL_CASES = [(d, i) for d in SPATIAL for i in range(len(SPATIAL[d]))]
SPATIAL_IDS = ["1d-UpSampling1D-0", "1d-ZeroPadding1D-1", "1d-Cropping1D-2",
               "1d-MaxPooling1D-3", "1d-AveragePooling1D-4", "1d-GlobalMaxPooling1D-5",
               "1d-GlobalAveragePooling1D-6", "2d-UpSampling2D-0", "2d-UpSampling2D-1",
               "2d-ZeroPadding2D-2", "2d-Cropping2D-3", "2d-MaxPooling2D-4",
               "2d-AveragePooling2D-5", "2d-GlobalMaxPooling2D-6",
               "2d-GlobalAveragePooling2D-7", "3d-UpSampling3D-0", "3d-ZeroPadding3D-1",
               "3d-Cropping3D-2", "3d-MaxPooling3D-3", "3d-AveragePooling3D-4",
               "3d-GlobalMaxPooling3D-5", "3d-GlobalAveragePooling3D-6"]
SIZE = {1: (12,), 2: (8, 8), 3: (6, 6, 6)}


def spatial(K, dims, index):
    L = K.L
    conv = {1: L.Conv1D, 2: L.Conv2D, 3: L.Conv3D}[dims]
    if dims == 3 and "Pooling" in SPATIAL_IDS[SPATIAL_CASES.index((dims, index))]:
        K.keras.backend.set_floatx("float32")  # TensorFlow has no float64 3-D pooling on CPU
    floatx = K.keras.backend.floatx()
    inp = L.Input(SIZE[dims] + (3,))
    x = conv(6, 3, padding="same", name="producer")(inp)
    x = SPATIAL[dims][index](L)(L.ELU()(x))
    if len(x.shape) > 2:
        x = L.Flatten()(conv(4, 1, name="consumer")(x))
    else:
        x = L.Dense(4, name="consumer")(x)
    return Case(make(K, inp, head(K, x)), normal(2, *SIZE[dims], 3, dtype=floatx),
                ("producer",), TOL if floatx == "float64" else 1e-5)


# ---- LayerScale, concatenation splitting, shared layers --------------------------------

def layer_scale(K):
    L, LayerScale = K.L, K.layer_scale
    inp = L.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", name="producer")(inp)
    x = LayerScale(0.5, 6, name="scale")(x)
    x = L.Dense(8, name="pointwise")(x)                      # ConvNeXt's MLP
    x = LayerScale(1e-1, 8, name="scale2")(L.Activation("gelu")(x))
    x = L.Conv2D(4, 3, name="consumer")(x)
    return Case(make(K, inp, head(K, L.GlobalAveragePooling2D()(x))), normal(2, 8, 8, 3),
                ("producer", "pointwise"))


def concatenate_added_to_a_conv(K):
    L = K.L
    inp = L.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same", name="conv_a")(inp)
    b = L.Conv2D(6, 3, padding="same", name="conv_b")(inp)
    c = L.Conv2D(10, 3, padding="same", name="conv_c")(inp)
    x = L.Add()([L.Concatenate()([a, b]), c])
    x = L.Conv2D(4, 3, name="consumer")(L.ReLU()(x))
    return Case(make(K, inp, head(K, L.GlobalAveragePooling2D()(x))), normal(2, 8, 8, 3),
                ("conv_a", "conv_b", "conv_c"))


def shared_conv_on_two_inputs(K):
    L = K.L
    one, two = L.Input((8, 8, 3)), L.Input((8, 8, 3))
    shared = L.Conv2D(6, 3, padding="same", name="shared")
    x = L.Concatenate()([shared(one), L.ReLU()(shared(two))])
    x = L.Conv2D(4, 3, name="consumer")(x)
    return Case(make(K, [one, two], head(K, L.GlobalAveragePooling2D()(x))),
                [normal(2, 8, 8, 3, seed=1), normal(2, 8, 8, 3, seed=2)],
                ("shared", "consumer"))


def shared_conv_reading_two_producers(K):
    L = K.L
    inp = L.Input((8, 8, 3))
    a = L.Conv2D(6, 3, padding="same", name="a")(inp)
    b = L.Conv2D(6, 1, name="b")(inp)
    shared = L.Conv2D(5, 3, padding="same", name="shared")
    x = L.Add()([shared(a), shared(L.ReLU()(b))])
    x = L.Conv2D(4, 3, name="consumer")(x)
    return Case(make(K, inp, head(K, L.GlobalAveragePooling2D()(x))), normal(2, 8, 8, 3),
                ("a", "b", "shared"))


#: every case both generations run: id -> builder(K)
CASES = {
    **{f"recurrent_stacked-{k}": (lambda K, k=k: recurrent_stacked(K, k)) for k in RNNS},
    **{f"recurrent_td_dense-{k}": (lambda K, k=k: recurrent_time_distributed_dense(K, k))
       for k in RNNS},
    **{f"bidirectional-{m}": (lambda K, m=m: bidirectional(K, m)) for m in ("concat", "sum")},
    "time_distributed": time_distributed,
    **{f"op-{op}": (lambda K, op=op: single_input_op(K, op)) for op in OPS},
    "scaled_residual": scaled_residual,
    "permute_keep": permute,
    **{f"spatial-{i}": (lambda K, c=c: spatial(K, *c))
       for i, c in zip(SPATIAL_IDS, SPATIAL_CASES)},
    "layer_scale": layer_scale,
    "concatenate_added_to_a_conv": concatenate_added_to_a_conv,
    "shared_conv_on_two_inputs": shared_conv_on_two_inputs,
    "shared_conv_reading_two_producers": shared_conv_reading_two_producers,
}
#: cases expected to fail (the f(0) != 0 gap), id -> builder(K)
XFAIL = {f"nonzero-{op}": (lambda K, op=op: non_zero_preserving_op(K, op))
         for op in ("sigmoid", "plus_one")}
