"""keras-hub causal LMs cut to half their parameters, run in a child process by
tests/test_language_models.py. ``python tests/keras3_lm_cases.py cut OUT`` builds each
family's causal LM (small config, random weights), plans it under ``params_target=0.5``,
applies, verifies, generates, quantizes, saves ``OUT/<family>.keras`` (float) and
``OUT/<family>_int8.keras`` with their logits in ``OUT/<family>.npz``, and prints one JSON
line of measurements; ``python tests/keras3_lm_cases.py load OUT`` reloads them in a fresh
process after only ``import surgery`` and prints the logit differences.
"""
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import keras  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from keras3_hub_cases import _randomize, logged  # noqa: E402

FAMILIES = ("llama3", "qwen3", "mistral", "gemma3")
VOCAB, SEQ, PROMPT = 64, 12, 4


def causal_lm(family: str):
    """``family``'s causal LM at a small config: 2 blocks, 4 query heads in 2 key/value
    groups, hidden 32, MLP 64; random weights (visible gains), no preprocessor."""
    import keras_hub

    keras.utils.set_random_seed(0)
    common = dict(vocabulary_size=VOCAB, num_layers=2, num_query_heads=4,
                  num_key_value_heads=2, hidden_dim=32, intermediate_dim=64)
    if family == "llama3":
        backbone = keras_hub.models.Llama3Backbone(**common)
        task = keras_hub.models.Llama3CausalLM
    elif family == "qwen3":
        backbone = keras_hub.models.Qwen3Backbone(head_dim=8, **common)
        task = keras_hub.models.Qwen3CausalLM
    elif family == "mistral":
        backbone = keras_hub.models.MistralBackbone(sliding_window=8, **common)
        task = keras_hub.models.MistralCausalLM
    else:
        backbone = keras_hub.models.Gemma3Backbone(image_size=16, head_dim=8, **common)
        task = keras_hub.models.Gemma3CausalLM
    return task(backbone=_randomize(backbone), preprocessor=None)


def tokens(batch: int = 3):
    rng = np.random.default_rng(1)
    return {"token_ids": rng.integers(1, VOCAB, (batch, SEQ)).astype("int32"),
            "padding_mask": np.ones((batch, SEQ), "int32")}


def logits(model, x) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(x, training=False))


def greedy_without_cache(model, prompt: np.ndarray) -> list:
    """Each next token as the argmax of a full forward pass over the tokens so far (no
    cache): what ``generate`` with a greedy sampler must reproduce."""
    ids = [int(t) for t in prompt]
    while len(ids) < SEQ:
        x = {"token_ids": np.array([ids + [0] * (SEQ - len(ids))], "int32"),
             "padding_mask": np.array([[1] * len(ids) + [0] * (SEQ - len(ids))], "int32")}
        ids.append(int(np.argmax(logits(model, x)[0, len(ids) - 1])))
    return ids


def generated(model, prompt: np.ndarray) -> list:
    model.compile(sampler="greedy")
    x = {"token_ids": np.array([list(prompt) + [0] * (SEQ - len(prompt))], "int32"),
         "padding_mask": np.array([[True] * len(prompt) + [False] * (SEQ - len(prompt))])}
    if type(model).__name__ == "Gemma3CausalLM":
        # keras-hub 0.32's Gemma3CausalLM.generate fails without a preprocessor, cut or
        # not (its outputs hold "images": None, which it then concatenates): the
        # cached greedy loop underneath is called directly
        out = model.generate_step(x, stop_token_ids=None)
    else:
        out = model.generate(x, max_length=SEQ, stop_token_ids=None)
    return [int(t) for t in np.asarray(out["token_ids"])[0]]


def cut(out: str) -> None:
    import surgery
    from surgery.engine.zeroing import max_relative_difference

    report, x = {}, tokens()
    for family in FAMILIES:
        lm = causal_lm(family)
        plan = surgery.plan(lm, params_target=0.5, data=x)
        small = surgery.apply(lm, plan)
        zeroed = surgery.zero_channels(lm, plan.deletions, plan.units)
        prompt = x["token_ids"][0, :PROMPT]
        y = logits(small, x)
        r = report[family] = {
            "classes": [type(lm).__name__, type(small).__name__,
                        type(small.backbone).__name__],
            "params": [lm.count_params(), plan.settings["params_after"],
                       small.count_params()],
            "units": plan.units, "skipped": plan.skipped,
            "hidden": len(plan.deletions.get(small.backbone.token_embedding.name, [])),
            "verify": surgery.verify(lm, small, plan, x),
            "moved": max_relative_difference(logits(lm, x), logits(zeroed, x)),
            "generated": generated(small, prompt),
            "greedy": greedy_without_cache(small, prompt),
            "original_unchanged": float(np.abs(logits(lm, x) - logits(causal_lm(family), x))
                                        .max()),
        }
        by_flops = surgery.plan(lm, flops_target=0.5, data=x)
        r["flops_target"] = [surgery.count_flops(lm), by_flops.settings["flops_after"],
                             surgery.count_flops(surgery.apply(lm, by_flops))]
        small.save(os.path.join(out, f"{family}.keras"))
        small.quantize("int8")
        y8 = logits(small, x)
        r["int8_error"] = float(np.abs(y8 - y).max() / np.abs(y).max())
        r["int8_layers"] = sum(getattr(layer, "quantization_mode", None) == "int8"
                               for layer in small.backbone._flatten_layers())
        r["int8_generated"] = len(generated(small, prompt))
        small.save(os.path.join(out, f"{family}_int8.keras"))
        np.savez(os.path.join(out, f"{family}.npz"), y=y, y8=y8)
    lm = causal_lm("llama3")
    with logged() as lines:
        deep = surgery.plan(lm, params_target=0.5, depth=True)
    report["depth"] = [sorted(layer for layer, axes in deep.units.items() if "blocks" in axes),
                       [m for m in lines if "depth=True" in m]]
    try:
        surgery.plan(lm, latency_target=0.3, runtime="onnxruntime")
    except surgery.SurgeryError as exc:
        report["latency_refused"] = str(exc)
    small = surgery.apply(lm, surgery.plan(lm, params_target=0.5))
    y = logits(small, x)
    small.quantize("int4")
    report["int4_error"] = float(np.abs(logits(small, x) - y).max() / np.abs(y).max())
    small.save(os.path.join(out, "llama3_int4.keras"))
    np.save(os.path.join(out, "llama3_int4.npy"), logits(small, x))
    print("RESULT " + json.dumps(report, default=str))


def load(out: str) -> None:
    import surgery  # noqa: F401  (the only import a user needs)

    report, x = {}, tokens()

    def difference(name, expected):
        model = keras.saving.load_model(os.path.join(out, f"{name}.keras"))
        report[name] = [type(model).__name__, type(model.backbone).__name__,
                        float(np.abs(logits(model, x) - expected).max())]

    for family in FAMILIES:
        saved = np.load(os.path.join(out, f"{family}.npz"))
        difference(family, saved["y"])
        difference(f"{family}_int8", saved["y8"])
    difference("llama3_int4", np.load(os.path.join(out, "llama3_int4.npy")))
    print("RESULT " + json.dumps(report))




def gpt2(out: str) -> None:
    """A ``GPT2CausalLM`` cut two ways: heads (its blocks then read part of the task's
    generation cache) and, with ``head_dims=True``, heads and head widths (values cut
    deeper than keys, so the widths differ). For each: each block's kept (heads, key width, value width), the warnings
    ``apply`` logged, ``verify``, what greedy ``generate`` gave (the tokens, or the error
    it raised) beside full forward passes, and for the first, generation after a save and
    reload."""
    import keras_hub
    import surgery

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCAB, num_layers=2, num_heads=4, hidden_dim=32, intermediate_dim=64,
        max_sequence_length=SEQ)
    lm = keras_hub.models.GPT2CausalLM(backbone=_randomize(backbone), preprocessor=None)
    x = tokens()
    prompt = x["token_ids"][0, :PROMPT]

    def generate(model):
        try:
            return generated(model, prompt)
        except Exception as exc:  # noqa: BLE001  (what a user calling generate meets)
            return type(exc).__name__

    report = {}
    for name, kwargs in (("heads", dict(ratio=0.5)),
                         ("widths", dict(ratio=0.5, head_dims=True))):
        plan = surgery.plan(lm, **kwargs)
        if name == "widths":  # one value channel more than key channels in every block
            units = {layer: dict(axes, value_dim=sorted(axes["value_dim"]) + [
                min(set(range(8)) - set(axes["value_dim"]))]) if "value_dim" in axes else axes
                for layer, axes in plan.units.items()}
            plan = surgery.PrunePlan.from_deletions(plan.deletions, plan.groups, units=units)
        with logged() as lines:
            small = surgery.apply(lm, plan)
        attention = [b._self_attention_layer for b in small.backbone.transformer_layers]
        report[name] = {"kept": [[a.num_heads, a.key_dim, a.value_dim or a.key_dim]
                                 for a in attention],
                        "verify": surgery.verify(lm, small, plan, x),
                        "warnings": [m for m in lines if "cannot generate" in m],
                        "generated": generate(small),
                        "greedy": greedy_without_cache(small, prompt)}
        if name == "heads":
            path = os.path.join(out, "gpt2.keras")
            small.save(path)
            report[name]["reloaded"] = generate(keras.saving.load_model(path))

    # OPT: the same blocks; its task reads the token embedding held by the backbone's
    # TokenAndPositionEmbedding, and calls it again for the logits (tied)
    keras.utils.set_random_seed(0)
    lm = keras_hub.models.OPTCausalLM(backbone=_randomize(keras_hub.models.OPTBackbone(
        vocabulary_size=VOCAB, num_layers=2, num_heads=4, hidden_dim=32, intermediate_dim=64,
        max_sequence_length=SEQ)), preprocessor=None)
    plan = surgery.plan(lm, ratio=0.5)
    small = surgery.apply(lm, plan)
    path = os.path.join(out, "opt.keras")
    small.save(path)
    report["opt"] = {"class": type(small).__name__, "verify": surgery.verify(lm, small, plan, x),
                     "params": [lm.count_params(), plan.settings.get("params_after"),
                                small.count_params()],
                     "generated": generate(small), "greedy": greedy_without_cache(small, prompt),
                     "reloaded": generate(keras.saving.load_model(path))}
    print("RESULT " + json.dumps(report, default=str))


def streamed(out: str) -> None:
    """``verify`` of large models (zeroed call by call, no zeroed copy) against the small
    models' path (a zeroed copy), on a causal LM (a tied embedding called twice) and a CNN
    (BatchNormalization, Add), for a right and a wrong cut."""
    import surgery
    from surgery.pruning import execution

    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Add()([h, keras.layers.Conv2D(8, 1, name="c2")(inputs)])
    cnn = _randomize(keras.Model(inputs, keras.layers.Dense(3)(
        keras.layers.GlobalAveragePooling2D()(h))))
    images = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    report, default = {}, execution.STREAMED_PARAMS
    for name, model, x in (("lm", causal_lm("llama3"), tokens()), ("cnn", cnn, images)):
        plan = surgery.plan(model, ratio=0.5)
        wrong = surgery.PrunePlan.from_deletions(
            {k: [(c + 1) % 8 for c in v] for k, v in plan.deletions.items()}, plan.groups,
            units=plan.units)
        rows = []
        for cut in (plan, wrong):
            small = surgery.apply(model, cut)
            row = []
            for limit in (default, 0):  # the small models' path, then the streamed one
                execution.STREAMED_PARAMS = limit
                row.append(float(surgery.verify(model, small, plan, x)))
            rows.append(row)
        report[name] = rows
    print("RESULT " + json.dumps(report))


def candidates(out: str) -> None:
    """The Llama 3 LM planned under ``params_target=0.5`` by activations with 4 candidates:
    each candidate's kept heads / MLP units / hidden channels and parameters, its score,
    the same score recomputed from the cut model's logits (minus the mean KL divergence
    from the original's softmax), the chosen index, ``verify`` and how far the zeroing
    moved the logits."""
    import surgery
    from surgery.calibration import candidates as selection
    from surgery.engine.zeroing import max_relative_difference

    lm, x = causal_lm("llama3"), tokens(8)
    seen, real = [], selection.choose_candidate

    def spy(graph, plans, data, **kw):
        seen.extend(plans)
        return real(graph, plans, data, **kw)

    selection.choose_candidate = spy
    best = surgery.plan(lm, params_target=0.5, criterion="activation", data=x, candidates=4)
    reference = logits(lm, x).astype(np.float64)

    def divergence(y):
        p = np.exp(reference - reference.max(-1, keepdims=True))
        q = np.exp(y - y.max(-1, keepdims=True))
        p, q = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
        return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), -1)))

    rows = []
    for p in seen:
        small = surgery.apply(lm, p)
        kinds = {}
        for cut in p.cuts:
            kind = str(cut.unit).rsplit("/", 1)[-1]
            kinds[kind] = kinds.get(kind, 0) + cut.size - cut.removed
        rows.append({"kept": kinds, "params": small.count_params() / lm.count_params(),
                     "score": p.settings["candidate_score"],
                     "recomputed": -divergence(logits(small, x).astype(np.float64))})
    small = surgery.apply(lm, best)
    zeroed = surgery.zero_channels(lm, best.deletions, best.units)
    chosen_is_seen = any(best is p for p in seen)
    # outputs of 3 examples at most (12 positions x 64 logits each): scored on those only
    selection.MAX_OUTPUT_VALUES, few = 3 * SEQ * VOCAB + SEQ, {k: v[:3] for k, v in x.items()}
    reference, seen[:] = logits(lm, few).astype(np.float64), []
    bounded = surgery.plan(lm, params_target=0.5, criterion="activation", data=x, candidates=2)
    print("RESULT " + json.dumps({
        "bounded": [[p.settings["candidate_score"], -divergence(logits(
            surgery.apply(lm, p), few).astype(np.float64))] for p in seen],
        "bounded_chosen": bounded.settings["candidate"],
        "candidates": rows, "chosen": best.settings["candidate"],
        "chosen_is_seen": chosen_is_seen,
        "verify": surgery.verify(lm, small, best, x),
        "moved": max_relative_difference(logits(lm, x), logits(zeroed, x))}))


class _KillAfter(keras.callbacks.Callback):
    """SIGKILL this process at the end of round ``epoch`` (after the backup is written)."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            os.kill(os.getpid(), 9)


def distill(out: str, kill: str = "", strategy: str = "default") -> None:
    """Cut the Llama 3 LM in half and distil it for 6 steps in rounds of 2 with a backup in
    ``OUT/backup``; ``kill`` SIGKILLs the process after the second round."""
    import tensorflow as tf
    import surgery

    lm = causal_lm("llama3")
    rng = np.random.default_rng(3)
    ids = rng.integers(1, VOCAB, (32, SEQ + 1)).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((32, SEQ), "int32")}
    data = tf.data.Dataset.from_tensor_slices((x, ids[:, 1:])).batch(8).repeat()
    held_out = [({k: v[:8] for k, v in x.items()}, ids[:8, 1:])]
    small = surgery.apply(lm, surgery.plan(lm, params_target=0.5))
    before = surgery.perplexity(small, held_out)
    teacher = logits(lm, x)
    history = surgery.distill(small, lm, data, steps=6, checkpoint_every=2, learning_rate=3e-3,
                              checkpoint_dir=os.path.join(out, "backup"), verbose=0,
                              callbacks=[_KillAfter(1)] if kill else [], strategy=strategy)
    student = logits(small, x)
    print("RESULT " + json.dumps({
        "rounds_run": len(history["loss"]), "loss": history["loss"],
        "replicas": history["replicas"], "backend": keras.config.backend(),
        "perplexity": [before, surgery.perplexity(small, held_out),
                       surgery.perplexity(lm, held_out)],
        "teacher_unchanged": float(np.abs(logits(lm, x) - teacher).max()),
        "teacher_trainable": lm.trainable,
        "backup_left": os.path.exists(os.path.join(out, "backup")),
        "student_mean_abs": float(np.abs(student).mean())}))


if __name__ == "__main__":
    {"cut": cut, "load": load, "distill": distill, "streamed": streamed,
     "candidates": candidates, "gpt2": gpt2}[sys.argv[1]](*sys.argv[2:])
