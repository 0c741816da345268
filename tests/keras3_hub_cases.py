"""Keras 3 transformer cases (RMS normalisation, EinsumDense, the LayerNormalization
opt-in, keras-hub layers) run in a child process by tests/test_keras3_hub.py.
``python tests/keras3_hub_cases.py prune OUT`` imports Keras 3 first, then ``surgery``,
prunes each case, saves ``OUT/<case>.keras`` and ``OUT/<case>.npz`` (input, pruned outputs)
and prints one JSON line of measurements; ``python tests/keras3_hub_cases.py load OUT``
loads them in a fresh process after only ``import surgery`` and prints the output
differences.
"""
import contextlib
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import keras  # noqa: E402
from keras import layers, ops  # noqa: E402

T, D, HEADS, HEAD, FF = 6, 16, 2, 8, 32
CASES = ("llama_block", "hub_norms")
BACKBONES = ("vit", "deit", "bert", "llama", "mistral", "qwen3", "gemma3", "gpt2")
#: the backbones whose blocks' attention loses head widths (the decoders with rotary
#: position embeddings offer heads and query groups only)
HEAD_WIDTHS = ("vit", "deit", "bert", "gpt2")


def _randomize(model, seed=0):
    """Random weights everywhere, gains near 1 (norm gains, biases visible)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            layer.set_weights([(w + rng.normal(0, 0.3, w.shape)).astype(w.dtype)
                               for w in weights])
    return model


def _attention(n, prefix):
    """Multi-head self-attention written with EinsumDense projections and ops."""
    def proj(name):
        return layers.EinsumDense("btd,dnh->btnh", output_shape=(T, HEADS, HEAD),
                                  bias_axes="nh", name=f"{prefix}_{name}")(n)
    q, k, v = proj("q"), proj("k"), proj("v")
    scores = ops.softmax(ops.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(HEAD), axis=-1)
    o = ops.einsum("bnts,bsnh->btnh", scores, v)
    return layers.EinsumDense("btnh,nhd->btd", output_shape=(T, D), bias_axes="d",
                              name=f"{prefix}_o")(o)


def block_model(norm, name):
    """A Llama-style pre-norm block: norm → attention → add → norm → gated FFN
    (EinsumDense gate, Dense up, silu(gate) * up, Dense down) → add → norm → head."""
    x = keras.Input((T, 12))
    h = layers.Dense(D, name="embed")(x)
    h = h + _attention(norm("attn_norm")(h), "attn")
    n = norm("ffn_norm")(h)
    gate = layers.EinsumDense("btd,df->btf", output_shape=(T, FF), bias_axes="f",
                              name="gate")(n)
    up = layers.Dense(FF, name="up")(n)
    h = h + layers.Dense(D, name="down")(ops.silu(gate) * up)
    y = layers.Dense(5, name="head")(norm("final_norm")(h))
    return keras.Model(x, y, name=name)


def _norm_factory(case):
    if case == "llama_block":
        return lambda name: (lambda t: layers.RMSNormalization(epsilon=1e-3, name=name)(t))
    from keras_hub.src.models.gemma.rms_normalization import RMSNormalization
    from keras_hub.src.models.llama.llama_layernorm import LlamaLayerNorm

    kinds = {"attn_norm": LlamaLayerNorm, "ffn_norm": RMSNormalization,
             "final_norm": LlamaLayerNorm}
    return lambda name: (lambda t: kinds[name](epsilon=1e-3, name=name)(t))


def layernorm_model():
    x = keras.Input((T, 12))
    h = layers.Dense(D, name="embed")(x)
    n = layers.LayerNormalization(name="ln1")(h)
    h = h + layers.Dense(D, name="mix")(layers.Dense(FF, activation="gelu", name="fc")(n))
    y = layers.Dense(5, name="head")(layers.LayerNormalization(name="ln2")(h))
    return keras.Model(x, y, name="ln_block")


def backbone(case):
    """A keras-hub backbone at a small config, random weights (visible biases, gains)."""
    import keras_hub

    keras.config.set_floatx("float32")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(2)
    if case == "vit":
        model = keras_hub.models.ViTBackbone(image_shape=(16, 16, 3), patch_size=4,
                                             num_layers=2, num_heads=4, hidden_dim=16,
                                             mlp_dim=32)
        x = rng.normal(size=(3, 16, 16, 3)).astype("float32")
    elif case == "deit":  # ViT's blocks, a distillation token, a config that cannot clone
        model = keras_hub.models.DeiTBackbone(image_shape=(16, 16, 3), patch_size=4,
                                              num_layers=2, num_heads=4, hidden_dim=16,
                                              intermediate_dim=32)
        x = rng.normal(size=(3, 16, 16, 3)).astype("float32")
    elif case == "llama":  # grouped-query attention: 4 query heads, 2 key/value heads
        model = keras_hub.models.LlamaBackbone(vocabulary_size=50, num_layers=2,
                                               num_query_heads=4, num_key_value_heads=2,
                                               hidden_dim=16, intermediate_dim=32)
        x = {"token_ids": rng.integers(0, 50, (3, 10)).astype("int32"),
             "padding_mask": np.ones((3, 10), "int32")}
    elif case == "gemma3":  # head axis first in its kernels, query/key norms, text only
        model = keras_hub.models.Gemma3Backbone(vocabulary_size=50, image_size=16,
                                                num_layers=2, num_query_heads=4,
                                                num_key_value_heads=2, hidden_dim=16,
                                                intermediate_dim=32, head_dim=8)
        x = {"token_ids": rng.integers(0, 50, (3, 10)).astype("int32"),
             "padding_mask": np.ones((3, 10), "int32")}
    elif case == "gpt2":  # keras-hub's TransformerDecoder blocks, causal
        model = keras_hub.models.GPT2Backbone(vocabulary_size=50, num_layers=2, num_heads=4,
                                              hidden_dim=16, intermediate_dim=32,
                                              max_sequence_length=12)
        x = {"token_ids": rng.integers(0, 50, (3, 10)).astype("int32"),
             "padding_mask": np.ones((3, 10), "int32")}
    elif case in ("mistral", "qwen3"):  # Llama's block: a sliding window; head norms
        extra = dict(sliding_window=8) if case == "mistral" else dict(head_dim=8)
        model = getattr(keras_hub.models, f"{case.capitalize()}Backbone")(
            vocabulary_size=50, num_layers=2, num_query_heads=4, num_key_value_heads=2,
            hidden_dim=16, intermediate_dim=32, **extra)
        x = {"token_ids": rng.integers(0, 50, (3, 10)).astype("int32"),
             "padding_mask": np.ones((3, 10), "int32")}
    else:
        model = keras_hub.models.BertBackbone(vocabulary_size=50, num_layers=2, num_heads=4,
                                              hidden_dim=16, intermediate_dim=32,
                                              max_sequence_length=12, dropout=0.0)
        x = {"token_ids": rng.integers(0, 50, (3, 10)).astype("int32"),
             "segment_ids": rng.integers(0, 2, (3, 10)).astype("int32"),
             "padding_mask": np.ones((3, 10), "int32")}
    return _randomize(model), x


def _outputs(model, x):
    y = model(x, training=False)
    if isinstance(y, dict) and "sequence_output" in y:
        y = y["sequence_output"]
    return keras.ops.convert_to_numpy(y)


def prune(out):
    import surgery
    from surgery.engine.zeroing import max_relative_difference

    report = {}
    x = np.random.default_rng(1).normal(size=(4, T, 12))
    for case in CASES:
        keras.config.set_floatx("float64" if case == "llama_block" else "float32")
        keras.utils.set_random_seed(0)
        model = _randomize(block_model(_norm_factory(case), case))
        data = x.astype(keras.config.floatx())
        plan = surgery.plan(model, ratio=0.5)
        pruned = surgery.apply(model, plan)
        zeroed = surgery.zero_channels(model, plan.deletions)
        report[case] = {
            "deleted": {k: len(v) for k, v in plan.deletions.items()},
            "skipped": plan.skipped,
            "verify": surgery.verify(model, pruned, plan, data),
            "moved": max_relative_difference(model(data, training=False),
                                             zeroed(data, training=False)),
            "params": [model.count_params(), pruned.count_params()],
            "flops": [surgery.count_flops(model), surgery.count_flops(pruned)],
            "epsilon": [model.get_layer("ffn_norm").epsilon,
                        pruned.get_layer("ffn_norm").epsilon],
        }
        moved = {n: sorted((c + 1) % D for c in v) if n == "embed" else v
                 for n, v in plan.deletions.items()}
        moved.update({n: moved["embed"] for n in ("attn_o", "down")})
        shifted = surgery.PrunePlan.from_deletions(moved, plan.groups)
        report[case]["verify_wrong_channels"] = surgery.verify(
            model, surgery.apply(model, shifted), plan, data)
        pruned.save(os.path.join(out, f"{case}.keras"))
        np.savez(os.path.join(out, f"{case}.npz"), x=data, y=_outputs(pruned, data))

    for case in BACKBONES:
        model, data = backbone(case)
        plan = surgery.plan(model, ratio=0.5)
        pruned = surgery.apply(model, plan)
        zeroed = surgery.zero_channels(model, plan.deletions, plan.units)
        report[case] = {
            "units": {f"{layer}:{axis}": len(v) for layer, axes in plan.units.items()
                      for axis, v in axes.items()},
            "verify": surgery.verify(model, pruned, plan, data),
            "moved": max_relative_difference(_outputs(model, data), _outputs(zeroed, data)),
            "params": [model.count_params(), pruned.count_params()],
            "flops": [surgery.count_flops(model), surgery.count_flops(pruned)],
            "summary": plan.summary(),
            "heads": plan.units,
        }
        budget = surgery.plan(model, params_target=0.5)  # heads, block widths and channels
        smaller = surgery.apply(model, budget)
        report[case]["params_target"] = [budget.settings["params_after"],
                                         smaller.count_params()]
        report[case]["params_target_verify"] = surgery.verify(model, smaller, budget, data)
        smaller.save(os.path.join(out, f"{case}_params.keras"))
        np.savez(os.path.join(out, f"{case}_params.npz"), y=_outputs(smaller, data),
                 **(data if isinstance(data, dict) else {"x": data}))
        shifted = surgery.PrunePlan.from_deletions(plan.deletions, plan.groups, units={
            layer: {axis: sorted((c + 1) % 4 for c in v) if axis.endswith("heads") else v
                    for axis, v in axes.items()} for layer, axes in plan.units.items()})
        report[case]["verify_wrong_heads"] = surgery.verify(
            model, surgery.apply(model, shifted), plan, data)
        pruned.save(os.path.join(out, f"{case}.keras"))
        np.savez(os.path.join(out, f"{case}.npz"), y=_outputs(pruned, data),
                 **(data if isinstance(data, dict) else {"x": data}))

    for case in HEAD_WIDTHS:  # head widths with heads, under a FLOPs target
        model, data = backbone(case)
        plan = surgery.plan(model, flops_target=0.5, head_dims=True)
        pruned = surgery.apply(model, plan)
        zeroed = surgery.zero_channels(model, plan.deletions, plan.units)
        report[f"{case}_head_dims"] = {
            "widths": {f"{layer}:{axis}": len(v) for layer, axes in plan.units.items()
                       for axis, v in axes.items()
                       if v and axis.rpartition("/")[2] in ("key_dim", "value_dim")},
            "verify": surgery.verify(model, pruned, plan, data),
            "moved": max_relative_difference(_outputs(model, data), _outputs(zeroed, data)),
            "flops": [surgery.count_flops(model), plan.settings["flops_after"],
                      surgery.count_flops(pruned)],
        }
        pruned.save(os.path.join(out, f"{case}_head_dims.keras"))
        np.savez(os.path.join(out, f"{case}_head_dims.npz"), y=_outputs(pruned, data),
                 **(data if isinstance(data, dict) else {"x": data}))

    for case in ("bert", "gpt2"):  # head widths by activation: a key channel of no use
        model, data = backbone(case)
        block = next(l for l in model.layers if type(l).__name__.startswith("Transformer"))
        mha = block._self_attention_layer
        qk, qb, kk, *rest = mha.get_weights()
        qk[..., 1], qb[..., 1], kk[..., 1] = 0.0, 0.0, 10 * kk[..., 1]
        mha.set_weights([qk, qb, kk, *rest])
        report[f"{case}_width_activations"] = {
            criterion: surgery.plan(model, ratio=0.25, heads=False, head_dims=True,
                                    criterion=criterion, data=data).units[block.name]
            .get("key_dim") for criterion in ("activation", "l2")}

    keras.config.set_floatx("float64")
    keras.utils.set_random_seed(0)
    model = _randomize(layernorm_model())
    data = x.astype("float64")
    exact = surgery.plan(model, ratio=0.5)
    loose = surgery.plan(model, ratio=0.5, exact=False, data=(data, None))
    pruned = surgery.apply(model, loose)
    report["layernorm"] = {
        "exact_deleted": sorted(exact.deletions), "exact_skipped": exact.skipped,
        "loose_deleted": sorted(loose.deletions),
        "settings": {k: loose.settings.get(k) for k in ("exact", "approximate", "deviation")},
        "verify": surgery.verify(model, pruned, loose, data),
        "json_roundtrip": surgery.PrunePlan.from_json(loose.to_json()).settings["exact"],
        "shapes": [pruned.get_layer("ln1").get_weights()[0].shape[0],
                   pruned.get_layer("embed").get_weights()[0].shape[1]],
    }
    print("RESULT " + json.dumps(report, default=str))


def tasks(out):
    """keras-hub classifier tasks (``BertTextClassifier``, ``ViTImageClassifier``) over the
    ``bert`` and ``vit`` backbones, random weights (their heads' too), cut by ratio 0.5:
    the class ``apply`` returns, ``verify`` (a head rebuilt with fresh weights would fail
    it), how far zeroing moved the logits, a same-process reload and the input model's
    logits before and after; a task whose config cannot rebuild it; ALBERT (one block
    called for both layers) cut by ratio 0.5; and the error a ``BertMaskedLM`` gets."""
    import keras_hub
    import surgery
    from surgery.engine.zeroing import max_relative_difference

    report = {}
    for case, task in (("bert", "BertTextClassifier"), ("vit", "ViTImageClassifier"),
                       ("distilbert", "DistilBertTextClassifier")):
        if case == "distilbert":  # its head has a hidden-width Dense of its own
            inner = keras_hub.models.DistilBertBackbone(
                vocabulary_size=50, num_layers=2, num_heads=4, hidden_dim=16,
                intermediate_dim=32, max_sequence_length=12)
            x = {k: v for k, v in backbone("bert")[1].items() if k != "segment_ids"}
        else:
            inner, x = backbone(case)
        model = _randomize(getattr(keras_hub.models, task)(backbone=inner, num_classes=3,
                                                          preprocessor=None))
        before = _outputs(model, x)
        plan = surgery.plan(model, ratio=0.5)
        small = surgery.apply(model, plan)
        zeroed = surgery.zero_channels(model, plan.deletions, plan.units)
        path = os.path.join(out, f"{case}_task.keras")
        small.save(path)
        report[case] = {
            "class": type(small).__name__, "verify": surgery.verify(model, small, plan, x),
            "moved": max_relative_difference(before, _outputs(zeroed, x)),
            "reloaded": float(np.abs(_outputs(keras.saving.load_model(path), x)
                                     - _outputs(small, x)).max()),
            "original_unchanged": float(np.abs(_outputs(model, x) - before).max()),
            "params": [model.count_params(), small.count_params()],
            "skipped": {k: str(v) for k, v in plan.skipped.items()}}

    class Unbuildable(keras_hub.models.ViTImageClassifier):  # a config that cannot rebuild it
        def get_config(self):
            return {k: v for k, v in super().get_config().items() if k != "num_classes"}

    inner, x = backbone("vit")
    model = _randomize(Unbuildable(backbone=inner, num_classes=3, preprocessor=None))
    plan = surgery.plan(model, ratio=0.5)
    with logged() as lines:
        small = surgery.apply(model, plan)
    report["unbuildable"] = {"class": type(small).__name__,
                             "verify": surgery.verify(model, small, plan, x),
                             "warnings": [m for m in lines if "functional" in m]}

    # ALBERT calls one block for every layer: the cut backbone's outputs are the last call's
    keras.utils.set_random_seed(0)
    model = _randomize(keras_hub.models.AlbertBackbone(
        vocabulary_size=50, num_layers=2, num_heads=4, embedding_dim=16, hidden_dim=32,
        intermediate_dim=64, num_groups=1, num_inner_repetitions=1, max_sequence_length=10))
    rng = np.random.default_rng(3)
    x = {"token_ids": rng.integers(1, 50, (3, 10)).astype("int32"),
         "segment_ids": np.zeros((3, 10), "int32"), "padding_mask": np.ones((3, 10), "int32")}
    plan = surgery.plan(model, ratio=0.5)
    small = surgery.apply(model, plan)
    zeroed = surgery.zero_channels(model, plan.deletions, plan.units)
    report["albert"] = {"units": plan.units, "verify": surgery.verify(model, small, plan, x),
                        "moved": max_relative_difference(_outputs(model, x),
                                                         _outputs(zeroed, x))}

    # a masked LM's head reads its backbone's token embedding: refused in one error
    inner, x = backbone("bert")
    model = keras_hub.models.BertMaskedLM(backbone=inner, preprocessor=None)
    try:
        surgery.plan(model, ratio=0.5)
    except surgery.SurgeryError as exc:
        report["masked_lm"] = str(exc)
    print("RESULT " + json.dumps(report))


@contextlib.contextmanager
def logged():
    """The messages surgery logs inside the block."""
    import logging

    lines = []

    class Lines(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())
    handler = Lines()
    logging.getLogger("surgery").addHandler(handler)
    try:
        yield lines
    finally:
        logging.getLogger("surgery").removeHandler(handler)


def load(out):
    import surgery  # noqa: F401  (the only import a user needs)

    report = {}
    for case in CASES:
        keras.config.set_floatx("float64" if case == "llama_block" else "float32")
        model = keras.saving.load_model(os.path.join(out, f"{case}.keras"))
        saved = np.load(os.path.join(out, f"{case}.npz"))
        y = _outputs(model, saved["x"])
        report[case] = float(np.max(np.abs(y - saved["y"])) / np.max(np.abs(saved["y"])))
    keras.config.set_floatx("float32")
    for case in BACKBONES + tuple(f"{b}_params" for b in BACKBONES) + \
            tuple(f"{b}_head_dims" for b in HEAD_WIDTHS):
        model = keras.saving.load_model(os.path.join(out, f"{case}.keras"))
        saved = dict(np.load(os.path.join(out, f"{case}.npz")))
        expected = saved.pop("y")
        y = _outputs(model, saved.get("x", saved))
        report[case] = float(np.max(np.abs(y - expected)) / np.max(np.abs(expected)))
        report[case + "_classes"] = sorted({type(l).__module__.split(".")[0] + "." +
                                            type(l).__name__ for l in model.layers})
    print("RESULT " + json.dumps(report))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    {"prune": prune, "load": load, "tasks": tasks}[sys.argv[1]](sys.argv[2])
