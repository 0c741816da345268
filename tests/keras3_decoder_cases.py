"""Minitron's activations in keras-hub's grouped-query decoders, in Keras 3, run in a child
process by tests/test_decoder_activations.py.

``python tests/keras3_decoder_cases.py forward OUT [CASES]`` builds keras-hub's Llama 3,
Mistral, Qwen3 and Gemma 3 backbones (vocabulary 128, 2 blocks, hidden 32, 4 query heads
in 2 key/value groups, feed-forward 64, 16 tokens, random weights; Llama 3's frequency
bands, linear rope scaling, sliding windows of 6, Gemma 3's post-branch norms and soft
cap; Gemma 3 also in its bidirectional mode) and prints one JSON line with, per case,
how far the decoder rule's NumPy pass is from the Keras block on the captured inputs
(``max |numpy - keras| / max |keras|`` over the blocks; a left-padded example, and the
windows over a short example's padding, make queries with no key to attend to).
``ranking OUT [CASES]`` plants a dead key/value group (its value kernel zero: its two
query heads' contexts are zero) in block 0, eight dead feed-forward units (their gate
and up columns zero) in block 1 and two hidden channels that are zero everywhere, then
reads the activation scores, and what
``plan(params_target=<their share>, criterion="activation", query_groups=True)`` removes
first (and ``verify`` of the cut model: Gemma 3's post-branch norms sit between its
other weights), and whether any unit (groups or, in a second plan, heads) fell back to
weight scores; ``control`` is that warning with the decoders' activations turned off.
"""
import json
import logging
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import keras  # noqa: E402

from keras3_hub_cases import _randomize  # noqa: E402

CASES = ("llama", "mistral", "qwen3", "gemma3")
#: the forward oracle's cases: also Gemma 3's bidirectional mode (EmbeddingGemma)
FORWARD_CASES = CASES + ("gemma3_bidirectional",)
T, VOCAB = 16, 128


def backbone(case, window=True):
    """A small keras-hub backbone of ``case`` with random weights."""
    import keras_hub

    keras.config.set_floatx("float32")
    keras.utils.set_random_seed(0)
    common = dict(vocabulary_size=VOCAB, num_layers=2, num_query_heads=4,
                  num_key_value_heads=2, hidden_dim=32, intermediate_dim=64)
    if case == "llama":  # Llama 3.1's rope bands: one long wavelength, one in between
        model = keras_hub.models.Llama3Backbone(
            rope_max_wavelength=500000, rope_position_scaling_factor=2.0,
            rope_frequency_adjustment_factor=8.0, rope_low_freq_factor=1.0,
            rope_high_freq_factor=4.0, rope_pretraining_sequence_length=1024, **common)
    elif case == "mistral":
        model = keras_hub.models.MistralBackbone(
            sliding_window=6 if window else None, rope_scaling_factor=2.0, **common)
    elif case == "qwen3":
        model = keras_hub.models.Qwen3Backbone(
            head_dim=8, sliding_window_size=6 if window else None, rope_scaling_factor=2.0,
            **common)
    else:  # "gemma3_bidirectional": EmbeddingGemma's attention both ways
        model = keras_hub.models.Gemma3Backbone(
            image_size=16, head_dim=8, use_post_ffw_norm=True, use_post_attention_norm=True,
            attention_logit_soft_cap=2.0, use_sliding_window_attention=window,
            sliding_window_size=6, local_rope_scaling_factor=2.0,
            use_bidirectional_attention=case.endswith("bidirectional"), **common)
    return _randomize(model, seed=1)


TASKS = {"llama": "Llama3CausalLM", "mistral": "MistralCausalLM", "qwen3": "Qwen3CausalLM",
         "gemma3": "Gemma3CausalLM"}


def causal_lm(model):
    """The family's causal LM over ``model`` (a backbone): its output is the logits, so
    the hidden width is no longer an output the plan must keep."""
    import keras_hub

    case = next(c for c in TASKS if type(model).__name__.lower().startswith(c))
    return getattr(keras_hub.models, TASKS[case])(backbone=model, preprocessor=None)


def tokens(n=4, seed=2):
    """``n`` examples: full, two right-padded (11 and 5 tokens) and one left-padded."""
    rng = np.random.default_rng(seed)
    mask = np.ones((n, T), "int32")
    mask[1, 11:] = 0
    mask[2, 5:] = 0
    mask[3, :3] = 0
    return {"token_ids": rng.integers(0, VOCAB, (n, T)).astype("int32"),
            "padding_mask": mask}


def _decoders(model):
    from surgery.engine.graph import resolve
    from surgery.engine.rules import rule_for

    graph = resolve(model)
    return graph, [(n, rule_for(n.info)) for n in graph.calls()
                   if "Decoder" in n.info.class_name]


def forward(out, cases=",".join(FORWARD_CASES)):
    """The rule's NumPy block output against the Keras block's, per case: ``error`` over
    every position, ``keyed`` over the queries with a key to attend to (JAX's fused
    attention gives the others a uniform softmax, TensorFlow's path a zero context)."""
    from surgery.engine.rules.decoder_forward import _call_inputs, attention_mask

    report = {}
    for case in cases.split(","):
        # JAX's fused attention skips Qwen3's sliding window: that keras-hub path is the
        # TensorFlow backend's only
        model = backbone(case, window=not (keras.config.backend() == "jax" and
                                           case == "qwen3"))
        _, blocks = _decoders(model)
        probe = keras.Model(model.inputs, [t for n, _ in blocks for t in n.inputs + n.outputs])
        values = [keras.ops.convert_to_numpy(v) for v in probe(tokens(), training=False)]
        errors, keyed, at = [], [], 0
        for node, rule in blocks:
            k = len(node.inputs)
            inputs, expected = values[at:at + k], values[at + k]
            at += k + 1
            gap = np.abs(rule._forward(node.info, inputs).output - expected)
            scale = np.max(np.abs(expected))
            rows = attention_mask(rule.family, node.info.config, _call_inputs(
                inputs, node.info.input_roles)).any(axis=-1)
            errors.append(float(np.max(gap) / scale))
            keyed.append(float(np.max(gap[rows]) / scale))
        report[case] = dict(blocks=len(blocks), error=max(errors), keyed=max(keyed),
                            roles=list(blocks[0][0].info.input_roles))
    print("RESULT " + json.dumps(report))


DEAD_HIDDEN = [3, 5]


def _plant(model):
    """Block 0: key/value group 0's value kernel zero; block 1: units 0-7 dead; hidden
    channels 3 and 5 dead everywhere (zero embedding columns, and no block writes them)."""
    from surgery.engine.rules import rule_for

    _, blocks = _decoders(model)
    (first, rule), (second, _) = blocks
    w = first.layer.get_weights()
    at = rule._at(first.info)
    np.moveaxis(w[at["value"]], rule.head_axis, 0)[0] = 0
    first.layer.set_weights(w)
    w, at = second.layer.get_weights(), rule_for(second.info)._at(second.info)
    for role in ("gate", "intermediate"):
        w[at[role]][:, :8] = 0
    second.layer.set_weights(w)
    for node, block_rule in blocks:
        w, at = node.layer.get_weights(), block_rule._at(node.info)
        for role in ("output", "down"):
            w[at[role]][..., DEAD_HIDDEN] = 0
        node.layer.set_weights(w)
    table = model.token_embedding.get_weights()
    table[0][:, DEAD_HIDDEN] = 0
    model.token_embedding.set_weights(table)
    return {f"{first.layer.name}:query_groups": [0],
            f"{second.layer.name}:intermediate_dim": list(range(8))}


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _scores(graph, blocks, data):
    from surgery.pruning.criteria.units import unit_scores

    targets = [(n.layer.name, a) for n, r in blocks for a in r.unit_axes(n.info)]
    return {k: [round(float(v), 6) for v in s]
            for k, s in unit_scores(graph, targets, "activation", data).items()}


def _control(model, data):
    """The warnings of the same plan with the decoders' activations turned off (what the
    warning check would see before these rules scored their units)."""
    import surgery
    from surgery.engine.rules import decoders
    from surgery.engine.rules.base import LayerRule
    from surgery.pruning.criteria._registry import logger

    warnings, rule = _Warnings(), decoders.LlamaDecoderRule
    own = rule.unit_activations
    logger.addHandler(warnings)
    rule.unit_activations = LayerRule.unit_activations
    try:
        surgery.plan(model, params_target=0.1, criterion="activation", data=data,
                     query_groups=True)
    finally:
        rule.unit_activations = own
        logger.removeHandler(warnings)
    return warnings.messages


def ranking(out, cases=",".join(CASES)):
    import surgery
    from surgery.pruning.criteria import activation
    from surgery.pruning.criteria._registry import logger

    report = {}
    for case in cases.split(","):
        bone = backbone(case)
        planted = _plant(bone)
        graph, blocks = _decoders(bone)
        model = causal_lm(bone)
        data = tokens(n=8, seed=3)
        hidden = {bone.token_embedding.name: DEAD_HIDDEN}
        oracle = surgery.PrunePlan.from_deletions(hidden, units={
            k.split(":")[0]: {k.split(":")[1]: v} for k, v in planted.items()})
        share = 1 - surgery.apply(model, oracle).count_params() / model.count_params()
        warnings = _Warnings()
        logger.addHandler(warnings)
        try:
            scores = _scores(graph, blocks, data)
            scores["hidden"] = [round(float(v), 6) for v in activation(
                bone, [bone.token_embedding.name], data)[bone.token_embedding.name]]
            plan = surgery.plan(model, params_target=share - 1e-7, criterion="activation",
                                data=data, query_groups=True)
            # heads (not groups) as units: scored by activations too
            surgery.plan(model, params_target=share, criterion="activation", data=data)
        finally:
            logger.removeHandler(warnings)
        report[case] = dict(
            planted=planted, scores=scores, warnings=warnings.messages,
            control=_control(model, data) if case == cases.split(",")[0] else None,
            removed={f"{layer}:{a}": v for layer, axes in plan.units.items()
                     for a, v in axes.items() if v},
            verify=surgery.verify(model, surgery.apply(model, plan), plan, data),
            deletions={k: v for k, v in plan.deletions.items() if len(v)})
    print("RESULT " + json.dumps(report, default=str))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    {"forward": forward, "ranking": ranking}[sys.argv[1]](*sys.argv[2:])
