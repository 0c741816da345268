"""Tests for surgery.pruning.criteria: channel-importance criteria, selection and the registry."""
from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest

import surgery
from surgery._backend import keras, tf
from surgery.pruning import criteria as C
from surgery.pruning.criteria._thinet import _contribution_gram, _n_positions, _patches

L = keras.layers
DEAD = 5  # planted dead channel; not 0, so that "lowest index wins ties" cannot fake a pass


def tiny_model(seed: int = 0) -> keras.Model:
    """Input(16,16,3) -> Conv2D 8 -> BN -> ReLU -> Conv2D 8 -> GAP -> Dense 4 (logits)."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((16, 16, 3))
    h = L.Conv2D(8, 3, padding="same", name="c1")(x)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.ReLU(name="r1")(h)
    h = L.Conv2D(8, 3, padding="same", name="c2")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    y = L.Dense(4, name="fc")(h)
    return keras.Model(x, y)


def tiny_data(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 16, 16, 3)).astype("float32"), rng.integers(0, 4, size=n)


def kill_filter(layer: keras.layers.Layer, channel: int) -> None:
    """Zero the kernel slice and bias of output ``channel`` (axis -1 kernels)."""
    kernel, bias = layer.get_weights()
    kernel[..., channel] = 0.0
    bias[channel] = 0.0
    layer.set_weights([kernel, bias])


# --------------------------------------------------------------------------------------
# planted dead channels
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("criterion", ["l1", "l2", "apoz", "activation", "taylor", "thinet"])
@pytest.mark.parametrize("layer", ["c1", "c2"])
def test_dead_filter_ranks_last(criterion, layer):
    model = tiny_model()
    kill_filter(model.get_layer(layer), DEAD)
    scores = C.channel_scores(model, [layer], criterion, data=tiny_data())[layer]
    assert scores.shape == (8,)
    assert np.argmin(scores) == DEAD
    # the dead channel is strictly below every live one (no lucky tie)
    assert np.all(np.delete(scores, DEAD) > scores[DEAD])


@pytest.mark.parametrize("criterion", ["l1", "l2", "fpgm"])
def test_dead_unit_in_dense_ranks_last(criterion):
    model = tiny_model()
    kernel, bias = model.get_layer("fc").get_weights()
    kernel[:, 2] = 0.0
    model.get_layer("fc").set_weights([kernel, bias])
    assert np.argmin(C.channel_scores(model, ["fc"], criterion)["fc"]) == 2


def test_activation_is_minitrons_aggregate_and_needs_no_labels():
    """``activation``: per channel, the L2 norm over examples of the mean |output| over
    positions (NumPy reference); inputs alone, (x, y) and a list of batches agree."""
    model = tiny_model()
    x, y = tiny_data(64)
    reference = np.abs(np.asarray(keras.Model(model.input, model.get_layer("c1").output)(x)))
    reference = np.sqrt(np.square(reference.reshape(64, -1, 8).mean(axis=1)).sum(axis=0))
    for data in (x, (x, y), [(x[:40], y[:40]), (x[40:],)]):
        got = C.channel_scores(model, ["c1"], "activation", data=data)["c1"]
        np.testing.assert_allclose(got, reference, rtol=1e-5)
    plan = surgery.plan(model, flops_target=0.3, criterion="activation", data=x)
    assert plan.settings["criterion"] == "activation" and plan.deletions


def test_fpgm_zero_filter_is_nearest_the_geometric_median():
    keras.utils.set_random_seed(1)
    x = keras.Input((8, 8, 3))
    conv = L.Conv2D(48, 3, name="wide")  # 48 zero-mean random filters of 27 weights
    model = keras.Model(x, conv(x))
    kill_filter(conv, 17)
    scores = C.fpgm(model, ["wide"])["wide"]
    assert np.argmin(scores) == 17
    # l1 also ranks it last, but fpgm must differ from l1 in general (distances, not norms)
    w = conv.get_weights()[0].reshape(-1, 48).T
    expected = [sum(np.linalg.norm(w[i] - w[j]) for j in range(48)) for i in range(48)]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_bn_gamma_zero_gamma_ranks_last():
    model = tiny_model()
    bn = model.get_layer("bn1")
    gamma, beta, mean, var = bn.get_weights()
    gamma[:] = np.linspace(0.5, 1.5, 8)
    gamma[DEAD] = 0.0
    bn.set_weights([gamma, beta, mean, var])
    scores = C.channel_scores(model, ["c1"], "bn_gamma")["c1"]
    assert np.argmin(scores) == DEAD
    np.testing.assert_allclose(scores, np.abs(gamma))


def test_bn_gamma_falls_back_to_l1_with_one_warning(caplog):
    model = tiny_model()
    with caplog.at_level(logging.WARNING, logger="surgery.pruning.criteria"):
        scores = C.bn_gamma(model, ["c1", "c2"])
    np.testing.assert_allclose(scores["c2"], C.l1(model, ["c2"])["c2"])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'c2'" in warnings[0].getMessage()
    assert "'c1'" not in warnings[0].getMessage()


# --------------------------------------------------------------------------------------
# kernel axes of every producer type
# --------------------------------------------------------------------------------------
def test_l1_axes_for_transpose_separable_depthwise():
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3))
    tr = L.Conv2DTranspose(7, 3, name="tr")  # kernel (3, 3, out=7, in=3)
    sep = L.SeparableConv2D(6, 3, depth_multiplier=2, name="sep")  # pointwise (1, 1, 6, 6)
    dw = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")  # outputs 3 * 2 = 6
    model = keras.Model(x, [tr(x), sep(x), dw(x)])

    k, b = tr.get_weights()
    k[:, :, 4, :] = 0.0
    b[4] = 0.0
    tr.set_weights([k, b])
    dk, pk, b = sep.get_weights()
    pk[..., 3] = 0.0
    b[3] = 0.0
    sep.set_weights([dk, pk, b])
    k, b = dw.get_weights()
    k[:, :, 1, 1] = 0.0  # input channel 1, multiplier 1 -> output channel 1 * 2 + 1 = 3
    dw.set_weights([k, b * 0])

    xs = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    outs = model.predict(xs, verbose=0)
    for name, out, dead in zip(["tr", "sep", "dw"], outs, [4, 3, 3]):
        assert np.all(out[..., dead] == 0.0)  # ground truth: that channel is really dead
        for crit in ("l1", "l2"):
            scores = C.channel_scores(model, [name], crit)[name]
            assert scores.shape == (out.shape[-1],)
            assert np.argmin(scores) == dead, (name, crit)


# --------------------------------------------------------------------------------------
# apoz / taylor details
# --------------------------------------------------------------------------------------
def test_apoz_counts_zeros_after_the_following_relu():
    model = tiny_model()
    scores = C.apoz(model, ["c1", "c2"], tiny_data())
    # c1 is read after BN -> ReLU: about half the values are zero for zero-mean inputs
    assert np.all(scores["c1"] > 0.2) and np.all(scores["c1"] < 0.8)
    # c2 has no activation: its raw output is never exactly zero
    np.testing.assert_allclose(scores["c2"], 1.0)


def test_taylor_matches_closed_form():
    """For logits z = fc(h) and CE loss, dL/dz = softmax(z) - onehot(y); for the GAP'ed
    conv c2, dL/da[n, p, f] = (1/P) * sum_k W[f, k] (p_k - y_k)."""
    model = tiny_model()
    x, y = tiny_data(32)
    a2 = keras.Model(model.inputs, model.get_layer("c2").output).predict(x, verbose=0)
    a2 = a2.astype(np.float64)
    z = model.predict(x, verbose=0).astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz = p - np.eye(4)[y]
    w = model.get_layer("fc").get_weights()[0].astype(np.float64)
    da2 = (dz @ w.T)[:, None, None, :] / (16 * 16)

    want_fc = np.abs(z * dz).mean(axis=0)
    want_c2 = np.abs((a2 * da2).sum(axis=(1, 2))).mean(axis=0)
    got = C.taylor(model, ["c2", "fc"], (x, y), batch_size=10)
    np.testing.assert_allclose(got["fc"], want_fc, rtol=1e-4)
    np.testing.assert_allclose(got["c2"], want_c2, rtol=1e-4)
    # one-hot labels give the same scores as integer labels
    onehot = C.taylor(model, ["c2", "fc"], (x, np.eye(4, dtype="float32")[y]))
    np.testing.assert_allclose(onehot["c2"], got["c2"], rtol=1e-5)


# --------------------------------------------------------------------------------------
# ThiNet
# --------------------------------------------------------------------------------------
def reconstruction_error(contrib: np.ndarray, removed) -> float:
    return float(np.sum(contrib[:, list(removed)].sum(axis=1) ** 2))


def test_thinet_greedy_hand_checked():
    # columns are channels. Norms: |c0| = 1, |c1| = 1.05, |c2| = 1.1.
    contrib = np.array([[1.0, 0.0, -1.1],
                        [0.0, 1.05, 0.0]])
    # step 1: errors 1, 1.1025, 1.21 -> c0.  step 2: {0,1}: 2.1025, {0,2}: 0.01 -> c2,
    # although removing by norm would take c1 (error 2.1025 instead of 0.01).
    assert C.thinet_greedy(contrib, 1) == [0]
    assert C.thinet_greedy(contrib, 2) == [0, 2]
    assert reconstruction_error(contrib, [0, 2]) == pytest.approx(0.01)
    assert C.thinet_greedy(contrib, 3) == [0, 2, 1]
    assert C.thinet_greedy(contrib, 0) == []

    # two channels that cancel exactly (c0 + c1 = 0), each larger than c2: ThiNet is
    # greedy, so it takes the small c2 first and then the partner that best cancels it;
    # the exact optimum for two removals would be {0, 1} with error 0.
    cancel = np.array([[1.0, -1.0, 0.5],
                       [1.0, -1.0, 0.5]])
    assert C.thinet_greedy(cancel, 1) == [2]
    assert C.thinet_greedy(cancel, 2) == [2, 1]  # error 0.5, vs 4.5 for [2, 0]
    assert C.thinet_greedy(cancel, 3) == [2, 1, 0]

    with pytest.raises(ValueError, match="n_remove"):
        C.thinet_greedy(contrib, 4)


def test_thinet_greedy_against_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(30):
        n_samples, n_ch = rng.integers(2, 12), rng.integers(2, 7)
        contrib = rng.normal(size=(n_samples, n_ch))
        contrib[:, rng.integers(n_ch)] *= rng.choice([0.0, 1.0, -3.0])
        for n_remove in range(1, n_ch + 1):
            got = C.thinet_greedy(contrib, n_remove)
            assert len(set(got)) == n_remove
            best = min(itertools.combinations(range(n_ch), n_remove),
                       key=lambda s: reconstruction_error(contrib, s))
            # greedy can never beat the exhaustive optimum, and equals it for one removal
            assert reconstruction_error(contrib, got) >= reconstruction_error(contrib, best) - 1e-9
            if n_remove == 1:
                assert reconstruction_error(contrib, got) == pytest.approx(
                    reconstruction_error(contrib, best))
            # every step is the exhaustive best single addition to the previous set
            for k in range(n_remove):
                prefix = got[:k]
                errors = {i: reconstruction_error(contrib, prefix + [i])
                          for i in range(n_ch) if i not in prefix}
                assert errors[got[k]] == pytest.approx(min(errors.values()), abs=1e-9)
            assert got == C.thinet_greedy(contrib, n_ch)[:n_remove]  # removal order is stable


@pytest.mark.parametrize("kw", [
    dict(kernel_size=3, padding="same"),
    dict(kernel_size=3, padding="valid", strides=2),
    dict(kernel_size=(3, 2), padding="same", strides=2),
    dict(kernel_size=3, padding="same", dilation_rate=2),
    dict(kernel_size=1, padding="valid"),
])
def test_thinet_contributions_sum_to_the_conv_output(kw):
    """sum_c contribution_c + bias must be exactly the consumer's pre-activation output."""
    keras.utils.set_random_seed(0)
    conv = L.Conv2D(5, bias_initializer="random_normal", **kw)
    x = np.random.default_rng(1).normal(size=(3, 9, 10, 4))
    y = conv(x.astype("float32")).numpy().reshape(-1, 5)
    idx = np.random.default_rng(2).choice(y.shape[0], 40, replace=False)
    window = dict(kernel=conv.kernel.numpy(), strides=conv.strides,
                  dilation=conv.dilation_rate, padding=conv.padding)
    assert _n_positions(x, window) == y.shape[0]
    contrib = np.einsum("nhwc,hwcf->nfc", _patches(x, window, idx),
                        window["kernel"].astype(np.float64))
    np.testing.assert_allclose(contrib.sum(-1) + conv.bias.numpy(), y[idx], atol=1e-4)


def test_thinet_end_to_end_matches_manual_computation():
    """With n_locations >= every output position, the sample is all positions, so the
    scores must equal greedy removal on contributions built by hand from the consumer's
    input (c1 -> BN -> ReLU -> c2; c2 -> GAP -> fc)."""
    model = tiny_model()
    x, _ = tiny_data(8)
    got = C.thinet(model, ["c1", "c2"], (x, None), n_locations=10_000, batch_size=3)
    for name, consumer, feeds in (("c1", "c2", "r1"), ("c2", "fc", "gap")):
        xin = keras.Model(model.inputs, model.get_layer(feeds).output).predict(x, verbose=0)
        kernel = model.get_layer(consumer).get_weights()[0].astype(np.float64)
        if kernel.ndim == 2:  # Dense: one position per example
            contrib = xin[:, None, :] * kernel.T[None]  # (n, filters, channels)
        else:  # 3x3 'same' conv: explicit windows over the zero-padded input
            xp = np.pad(xin.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
            windows = np.stack([xp[:, i:i + 3, j:j + 3, :]
                                for i in range(16) for j in range(16)], axis=1)
            contrib = np.einsum("bphwc,hwcf->bpfc", windows, kernel)
        order = C.thinet_greedy(contrib.reshape(-1, 8), 7)
        order += sorted(set(range(8)) - set(order))
        want = np.empty(8)
        want[order] = np.arange(8.0)
        np.testing.assert_array_equal(got[name], want, err_msg=name)


@pytest.mark.parametrize("shape", [(50, 3, 3, 6, 4), (7, 1, 1, 5, 300), (30, 3, 3, 4, 200)])
def test_thinet_gram_paths_agree(shape):
    """Both exact forms of the contribution Gram matrix (direct, factored) agree."""
    n, kh, kw, c, f = shape
    rng = np.random.default_rng(0)
    patches, kernel = rng.normal(size=(n, kh, kw, c)), rng.normal(size=(kh, kw, c, f))
    flat = np.einsum("nhwc,hwcf->nfc", patches, kernel).reshape(-1, c)
    np.testing.assert_allclose(_contribution_gram(patches, kernel), flat.T @ flat,
                               rtol=1e-9, atol=1e-9)


def test_thinet_falls_back_to_l1_without_consumer(caplog):
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same", name="a")(x)
    b = L.Conv2D(4, 3, padding="same", name="b")(x)
    out = L.Conv2D(2, 1, name="tail")(L.Add()([a, b]))
    model = keras.Model(x, out)
    with caplog.at_level(logging.WARNING, logger="surgery.pruning.criteria"):
        scores = C.thinet(model, ["a", "tail"], tiny_data(8)[:1] + (None,))
    np.testing.assert_allclose(scores["a"], C.l1(model, ["a"])["a"])
    assert "'a'" in caplog.text and "'tail'" in caplog.text


# --------------------------------------------------------------------------------------
# data handling: one pass, max_samples, Dataset == arrays
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("criterion", ["apoz", "activation", "taylor", "thinet"])
def test_data_driven_criteria_take_one_pass_and_respect_max_samples(criterion):
    model = tiny_model()
    x, y = tiny_data(64)
    pulled = []

    def batches():
        for i in range(20):  # 20 batches of 32 = 640 examples > max_samples
            pulled.append(i)
            j = (i % 2) * 32
            yield x[j:j + 32], y[j:j + 32]

    ds = tf.data.Dataset.from_generator(
        batches, output_signature=(tf.TensorSpec((None, 16, 16, 3), tf.float32),
                                   tf.TensorSpec((None,), tf.int64)))
    scores = C.channel_scores(model, ["c1", "c2", "fc"], criterion, data=ds, max_samples=96)
    # one pass over 96 examples (3 batches) for the three layers together; tf.data's
    # generator may read ahead of the consumer (two elements seen on a loaded machine); a
    # second pass would pull 6 or more
    assert 3 <= len(pulled) <= 5
    assert {k: v.shape for k, v in scores.items()} == {"c1": (8,), "c2": (8,), "fc": (4,)}
    if criterion != "thinet":  # thinet samples positions at random; the others are exact
        arrays = C.channel_scores(model, ["c1", "c2", "fc"], criterion,
                                  data=(np.concatenate([x, x[:32]]),
                                        np.concatenate([y, y[:32]])), max_samples=96)
        for name in scores:
            np.testing.assert_allclose(scores[name], arrays[name], rtol=1e-5)


# --------------------------------------------------------------------------------------
# select_channels
# --------------------------------------------------------------------------------------
def test_select_channels_ratio():
    s = np.array([5.0, 1.0, 4.0, 2.0, 3.0, 0.5, 9.0, 8.0, 7.0, 6.0])
    assert C.select_channels(s, ratio=0.3) == [1, 3, 5]  # floor(3.0), sorted indices
    assert C.select_channels(s, ratio=0.39) == [1, 3, 5]  # floor(3.9) = 3
    assert C.select_channels(s, ratio=0.0) == []
    assert C.select_channels(np.arange(100.0), ratio=0.29) == list(range(29))  # not 28
    assert C.select_channels(s, ratio=1.0) == sorted(np.argsort(s)[:9].tolist())  # min_keep=1
    assert C.select_channels(s, ratio=1.0, min_keep=0) == list(range(10))
    assert C.select_channels([1.0, 1.0, 1.0, 0.0], ratio=0.5) == [0, 3]  # ties: lower index
    assert all(type(i) is int for i in C.select_channels(s, ratio=0.5))


def test_select_channels_threshold_and_min_keep():
    s = [0.3, 0.1, 0.9, 0.2, 0.25]
    assert C.select_channels(s, threshold=0.25) == [1, 3]  # strictly below
    assert C.select_channels(s, threshold=0.0) == []
    assert C.select_channels(s, threshold=10.0) == [0, 1, 3, 4]  # keeps 1
    assert C.select_channels(s, threshold=10.0, min_keep=3) == [1, 3]  # lowest go first
    assert C.select_channels(s, ratio=0.8, min_keep=2) == [1, 3, 4]
    assert C.select_channels(s, ratio=0.5, min_keep=5) == []
    assert C.select_channels(s, threshold=1.0, min_keep=10) == []


def test_select_channels_errors():
    with pytest.raises(ValueError, match="exactly one"):
        C.select_channels([1.0, 2.0])
    with pytest.raises(ValueError, match="exactly one"):
        C.select_channels([1.0, 2.0], ratio=0.5, threshold=1.0)
    with pytest.raises(ValueError, match="ratio"):
        C.select_channels([1.0, 2.0], ratio=1.5)
    with pytest.raises(ValueError, match="NaN"):
        C.select_channels([1.0, np.nan], ratio=0.5)


# --------------------------------------------------------------------------------------
# registry and errors
# --------------------------------------------------------------------------------------
def test_registry_custom_criterion_used_through_channel_scores():
    model = tiny_model()
    try:
        @C.register_criterion("test_reverse_index")
        def reverse_index(model, layer_names, data=None, **options):
            return {n: np.arange(model.get_layer(n).output_shape[-1])[::-1] * 1.0
                    for n in layer_names}

        assert C.CRITERIA["test_reverse_index"] is reverse_index
        assert C.get_criterion("test_reverse_index") is reverse_index
        scores = C.channel_scores(model, ["c1", "fc"], criterion="test_reverse_index")
        np.testing.assert_array_equal(scores["fc"], [3.0, 2.0, 1.0, 0.0])
        assert C.select_channels(scores["c1"], ratio=0.25) == [6, 7]

        @C.register_criterion("test_reverse_index")  # re-registering replaces
        def constant(model, layer_names, data=None, **options):
            return {n: np.ones(model.get_layer(n).output_shape[-1]) for n in layer_names}

        assert C.get_criterion("test_reverse_index") is constant
        np.testing.assert_array_equal(
            C.channel_scores(model, ["fc"], "test_reverse_index")["fc"], np.ones(4))
        # a plain callable works without registration
        assert C.get_criterion(reverse_index) is reverse_index
        assert C.channel_scores(model, ["fc"], reverse_index)["fc"][0] == 3.0
    finally:
        C.CRITERIA.pop("test_reverse_index", None)
    assert {"l1", "l2", "bn_gamma", "apoz", "taylor", "fpgm", "thinet"} <= set(C.CRITERIA)


def test_errors():
    model = tiny_model()
    for crit in ("apoz", "taylor", "thinet"):
        with pytest.raises(ValueError, match="data="):
            C.channel_scores(model, ["c1"], crit)
        with pytest.raises(ValueError, match="data="):
            C.get_criterion(crit)(model, ["c1"])
    with pytest.raises(ValueError, match="'nope'.*known criteria: .*l1"):
        C.get_criterion("nope")
    with pytest.raises(ValueError, match="'nope'"):
        C.channel_scores(model, ["c1"], "nope")
    with pytest.raises(ValueError, match="unknown layer 'conv_missing'"):
        C.channel_scores(model, ["c1", "conv_missing"], "l1")
    with pytest.raises(ValueError, match="unknown layer 'conv_missing'"):
        C.apoz(model, ["conv_missing"], tiny_data(4))
    with pytest.raises(ValueError, match="'bn1'.*BatchNormalization"):
        C.channel_scores(model, ["bn1"], "l1")
    with pytest.raises(ValueError, match="labels"):
        C.taylor(model, ["c1"], (tiny_data(4)[0], None))
    with pytest.raises(ValueError, match="returned 3 scores for layer 'fc'"):
        C.channel_scores(model, ["fc"], lambda m, names, data=None: {"fc": np.ones(3)})
