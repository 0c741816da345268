"""Depth for decoder blocks that are layers of their own (Keras 3, TensorFlow backend), run
in child processes by tests/test_decoder_depth.py.

``python tests/keras3_decoder_depth_cases.py cut OUT`` builds the causal LMs of keras-hub's
Llama 3, Qwen3, Mistral, Gemma 3 and GPT-2 (4 blocks, small configs, random weights) and,
for each, prints in one JSON line:

* ``oracle``: block 2's residual branches zeroed (its attention output and feed-forward
  down projections, biases too), then that block removed by a plan made by hand: the
  logits must not move (``verify``) while the zeroing moved them (``moved``); removing
  block 1 instead is caught (``wrong_block``);
* ``ranking``: block 2 planted dead (its branch ends zero), then
  ``plan(params_target=<exactly its parameters' share>, depth=True)`` by weight norm and
  by activations: which blocks and other units each removes, the parameters predicted
  and counted, ``verify``, and whether greedy ``generate`` through the key/value cache of
  the model without the block picks the tokens full forward passes pick;
* ``passes``: BERT's and GPT-2's blocks in the NumPy pass behind their activation scores,
  against Keras;
* ``latency_refused``: ``latency_target`` with ``depth=True`` on the Llama 3 LM;
* ``post_norm``: ``depth=True`` on BERT (post-norm blocks: not the identity with their
  branches zero) warns and removes no block;
* the cut model saved as ``OUT/<family>.keras`` with its logits in ``OUT/<family>.npy``.

``python tests/keras3_decoder_depth_cases.py load OUT`` reloads each file in a fresh
process after only ``import surgery`` and prints the largest logit difference.
"""
import json
import logging
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import keras  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from keras3_hub_cases import _randomize  # noqa: E402
from keras3_lm_cases import PROMPT, VOCAB, generated, greedy_without_cache, logits, tokens  # noqa: E402,E501

FAMILIES = ("llama3", "qwen3", "mistral", "gemma3", "gpt2")
DEAD = 2  # the block planted dead


def causal_lm(family: str):
    """``family``'s causal LM: 4 blocks, hidden 32, MLP 64, 4 query heads (2 key/value
    groups where grouped); random weights, no preprocessor."""
    import keras_hub

    keras.utils.set_random_seed(0)
    common = dict(vocabulary_size=VOCAB, num_layers=4, hidden_dim=32, intermediate_dim=64)
    grouped = dict(common, num_query_heads=4, num_key_value_heads=2)
    if family == "llama3":
        backbone, task = keras_hub.models.Llama3Backbone(**grouped), \
            keras_hub.models.Llama3CausalLM
    elif family == "qwen3":
        backbone, task = keras_hub.models.Qwen3Backbone(head_dim=8, **grouped), \
            keras_hub.models.Qwen3CausalLM
    elif family == "mistral":
        backbone, task = keras_hub.models.MistralBackbone(sliding_window=8, **grouped), \
            keras_hub.models.MistralCausalLM
    elif family == "gemma3":
        backbone, task = keras_hub.models.Gemma3Backbone(image_size=16, head_dim=8,
                                                         **grouped), \
            keras_hub.models.Gemma3CausalLM
    else:
        backbone, task = keras_hub.models.GPT2Backbone(num_heads=4, max_sequence_length=16,
                                                       **common), \
            keras_hub.models.GPT2CausalLM
    return task(backbone=_randomize(backbone), preprocessor=None)


def blocks(lm) -> list:
    return list(lm.backbone.transformer_layers)


def kill(lm, index: int) -> None:
    """Zero the weights that end block ``index``'s residual branches, through its rule."""
    import surgery
    from surgery.engine.flatten import flattened
    from surgery.engine.graph import resolve

    node = next(n for n in flattened(resolve(lm)).calls() if n.layer.name == blocks(lm)[index].name)
    rule = surgery.rule_for(node.info)
    blocks(lm)[index].set_weights(rule.zero_units(node.info, {"blocks": [0]}))


def oracle(family: str, x) -> dict:
    import surgery
    from surgery.engine.zeroing import max_relative_difference

    lm = causal_lm(family)
    name = blocks(lm)[DEAD].name
    plan = surgery.PrunePlan.from_deletions({}, units={name: {"blocks": [0]}})
    zeroed = surgery.zero_channels(lm, plan.deletions, plan.units)
    small = surgery.apply(lm, plan)
    other = surgery.PrunePlan.from_deletions({}, units={blocks(lm)[1].name: {"blocks": [0]}})
    return dict(verify=surgery.verify(lm, small, plan, x),
                moved=max_relative_difference(logits(lm, x), logits(zeroed, x)),
                wrong_block=max_relative_difference(logits(zeroed, x),
                                                    logits(surgery.apply(lm, other), x)),
                skipped=type(small.backbone.get_layer(name)).__name__,
                params=[lm.count_params(), small.count_params()])


def ranking(family: str, x, out: str) -> dict:
    import surgery

    lm = causal_lm(family)
    kill(lm, DEAD)
    share = blocks(lm)[DEAD].count_params() / lm.count_params()
    result = {}
    for criterion in ("l2", "activation"):
        with Warnings() as said:
            plan = surgery.plan(lm, params_target=share, depth=True, criterion=criterion,
                                data=x)
        removed = {layer: axes for layer, axes in plan.units.items()
                   if any(len(v) for v in axes.values())}
        result[criterion] = dict(removed=removed, deletions=plan.deletions,
                                 predicted=plan.settings["params_after"],
                                 by_weights=[m for m in said if "no activations" in m])
    small = surgery.apply(lm, plan)
    prompt = x["token_ids"][0, :PROMPT]
    result.update(dead=blocks(lm)[DEAD].name, counted=small.count_params(),
                  verify=surgery.verify(lm, small, plan, x),
                  generated=generated(small, prompt), greedy=greedy_without_cache(small, prompt))
    small.save(os.path.join(out, f"{family}.keras"))
    np.save(os.path.join(out, f"{family}.npy"), logits(small, x))
    return result


class Warnings(logging.Handler):
    """The messages surgery logs while it is entered."""

    def __enter__(self):
        self.messages = []
        logging.getLogger("surgery").addHandler(self)
        return self.messages

    def __exit__(self, *exc):
        logging.getLogger("surgery").removeHandler(self)

    def emit(self, record):
        self.messages.append(record.getMessage())


def post_norm() -> dict:
    """BERT's post-norm blocks are no units of depth: ``depth=True`` says so and plans
    widths only."""
    import keras_hub
    import surgery

    bert = _randomize(keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB, num_layers=3, num_heads=4, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=12, dropout=0.0))
    x = {"token_ids": np.random.default_rng(0).integers(1, VOCAB, (3, 12)).astype("int32"),
         "segment_ids": np.zeros((3, 12), "int32"), "padding_mask": np.ones((3, 12), "int32")}
    with Warnings() as said:
        plan = surgery.plan(bert, ratio=0.5, depth=True, data=x)
    return dict(said=[m for m in said if "depth=True" in m],
                blocks=[c.group for c in plan.cuts if c.unit == "blocks"],
                heads=sum(c.removed for c in plan.cuts if c.unit == "heads"))


def passes() -> dict:
    """BERT's and GPT-2's blocks in the NumPy pass behind their activation scores against
    Keras (the largest difference of the block outputs at the tokens the padding mask keeps,
    the mask hiding 4 and 7 of 12 tokens in two examples), and whether a plan by
    activations fell back to weights for any of their units."""
    import keras_hub
    import surgery
    from surgery.engine.rules.decoder_forward import transformer_forward

    rng = np.random.default_rng(0)
    pad = np.array([[1] * 12, [1] * 8 + [0] * 4, [1] * 5 + [0] * 7], "int32")
    common = dict(vocabulary_size=VOCAB, num_layers=2, num_heads=4, hidden_dim=16,
                  intermediate_dim=32, max_sequence_length=12)
    report = {}
    for name in ("bert", "gpt2"):
        keras.utils.set_random_seed(0)
        x = {"token_ids": rng.integers(1, VOCAB, (3, 12)).astype("int32"), "padding_mask": pad}
        if name == "bert":
            model = _randomize(keras_hub.models.BertBackbone(dropout=0.0, **common))
            x["segment_ids"] = np.zeros((3, 12), "int32")
        else:
            model = _randomize(keras_hub.models.GPT2Backbone(**common))
        block = model.transformer_layers[1]
        mask = "padding_mask" if name == "bert" else "decoder_padding_mask"
        h = rng.normal(size=(3, 12, 16)).astype("float32")
        expected = keras.ops.convert_to_numpy(block(h, **{mask: pad}))
        rule = surgery.rule_for(type(block).__name__)
        run = transformer_forward(block.get_config(),
                                  dict(zip(rule.weight_order, block.get_weights())),
                                  [h, pad], ["", mask], causal=name == "gpt2")
        with Warnings() as said:
            surgery.plan(model, ratio=0.5, criterion="activation", data=x)
        report[name] = dict(error=float(np.abs(np.where(pad[..., None] > 0,
                                                        run.output - expected, 0)).max()),
                            by_weights=[m for m in said if "no activations" in m])
    return report


def cut(out: str) -> None:
    x = tokens()
    report = {family: dict(oracle=oracle(family, x), ranking=ranking(family, x, out))
              for family in FAMILIES}
    report["post_norm"] = post_norm()
    report["passes"] = passes()
    import surgery
    try:
        surgery.plan(causal_lm("llama3"), latency_target=0.3, depth=True)
    except surgery.SurgeryError as exc:
        report["latency_refused"] = str(exc)
    print("RESULT " + json.dumps(report, default=str))


def load(out: str) -> None:
    import surgery  # noqa: F401  (registers surgery>SkippedBlock and the cut backbone)

    x, report = tokens(), {}
    for family in FAMILIES:
        model = keras.models.load_model(os.path.join(out, f"{family}.keras"), compile=False)
        report[family] = float(np.abs(logits(model, x) -
                                      np.load(os.path.join(out, f"{family}.npy"))).max())
    print("RESULT " + json.dumps(report))


if __name__ == "__main__":
    {"cut": cut, "load": load}[sys.argv[1]](*sys.argv[2:])
