"""Depth and the one ranking of units (issue 30), in Keras 3 (TensorFlow backend), run in
a child process by tests/test_depth.py.

``python tests/keras3_depth_cases.py run OUT`` builds a keras-hub ``ViTBackbone`` (3
blocks, 4 heads, hidden 16, MLP 32, random weights) and prints one JSON line:

* ``oracle``: block 2's residual branches zeroed (its attention output and MLP ``dense_2``),
  then the block removed: the outputs must not move (``verify``), while the zeroing did
  (``moved``); removing another block instead is caught (``wrong_block``);
* ``ranking``: a dead block (block 2: branches zero), a dead head (block 1, head 3: its
  query, key, value and output weights zero) and five dead MLP units (block 3: their
  ``dense_1`` columns, biases and ``dense_2`` rows zero), then
  ``plan(params_target=<exactly their parameters' share>, depth=True)``: what it removes,
  by weight norm and by Minitron's activations on calibration inputs alone (and how far the
  rule's NumPy pass behind those is from Keras: ``activation_check``);
* ``hidden``: tests/transformer_models.py's ViT with RMS norms, three dead hidden channels,
  a dead head and eight dead MLP units: what a target of exactly their share removes;
* ``query_groups``: keras-hub's Llama, Mistral, Qwen3 and Gemma 3 backbones losing whole
  key/value groups (each with its query heads), by ratio and under ``params_target``;
* ``compensation``: the ViT at half its heads and MLP units with ``compensate=True``: the
  MLP units' mean outputs folded into each block's second Dense bias;
* ``width_activations``: block 2's key channel 1 made useless to the logits (zero query
  weights, key weights ten times the rest): which key channel of that block activation
  and weight-norm plans (``ratio=0.25``, head widths only) cut;
* ``latency_tables``: ``plan_for_latency`` on tables given by hand: where only the
  ``"blocks"`` table saves time, the plan removes one block and nothing else; where the
  blocks table is flat (a block saves nothing), it removes heads and MLP units, no block;
* the pruned model saved as ``OUT/depth.keras`` and reloaded (``reloaded``: the largest
  output difference), and exported to ONNX and run in ONNX Runtime (``onnx``).
"""
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import keras  # noqa: E402

from keras3_hub_cases import _outputs, _randomize  # noqa: E402

ENC = "vit_encoder"


def _model():
    import keras_hub

    keras.utils.set_random_seed(0)
    model = keras_hub.models.ViTBackbone(image_shape=(16, 16, 3), patch_size=4, num_layers=3,
                                         num_heads=4, hidden_dim=16, mlp_dim=32)
    x = np.random.default_rng(1).normal(size=(3, 16, 16, 3)).astype("float32")
    return _randomize(model), x


def _plant(model):
    """Zero block 2's branches, head 3 of block 1, MLP units 0-4 of block 3."""
    encoder = model.get_layer(ENC)
    b1, b2, b3 = encoder.encoder_layers
    for dense in (b2.mha._output_dense, b2.mlp.dense_2):
        dense.set_weights([np.zeros_like(w) for w in dense.get_weights()])
    for dense in (b1.mha._query_dense, b1.mha._key_dense, b1.mha._value_dense):
        w = dense.get_weights()
        w[0][:, 3] = 0
        w[1][3] = 0
        dense.set_weights(w)
    w = b1.mha._output_dense.get_weights()
    w[0][3] = 0
    b1.mha._output_dense.set_weights(w)
    w1, w2 = b3.mlp.dense_1.get_weights(), b3.mlp.dense_2.get_weights()
    w1[0][:, :5], w1[1][:5], w2[0][:5] = 0, 0, 0
    b3.mlp.dense_1.set_weights(w1)
    b3.mlp.dense_2.set_weights(w2)


def _query_groups(out):
    """Grouped-query decoders (2 key/value groups of 2 query heads) losing a whole group
    per block, by ratio and under a parameter target; saved and reloaded."""
    import surgery
    from surgery.engine.zeroing import max_relative_difference
    from keras3_hub_cases import backbone

    report = {}
    for case in ("llama", "mistral", "qwen3", "gemma3"):
        model, x = backbone(case)
        plan = surgery.plan(model, ratio=0.5, heads=False, query_groups=True)
        pruned = surgery.apply(model, plan)
        zeroed = surgery.zero_channels(model, plan.deletions, plan.units)
        wrong = surgery.PrunePlan.from_deletions(plan.deletions, plan.groups, units={
            layer: {a: [1 - g for g in v] if a == "query_groups" else v
                    for a, v in axes.items()} for layer, axes in plan.units.items()})
        budget = surgery.plan(model, params_target=0.4, query_groups=True)
        smaller = surgery.apply(model, budget)
        path = os.path.join(out, f"{case}_groups.keras")
        pruned.save(path)
        reloaded = keras.saving.load_model(path)
        report[case] = dict(
            groups={f"{layer}:{a}": v for layer, axes in plan.units.items()
                    for a, v in axes.items() if v},
            verify=surgery.verify(model, pruned, plan, x),
            moved=max_relative_difference(_outputs(model, x), _outputs(zeroed, x)),
            wrong_group=surgery.verify(model, surgery.apply(model, wrong), plan, x),
            budget=[budget.settings["params_after"], smaller.count_params(),
                    model.count_params()],
            budget_verify=surgery.verify(model, smaller, budget, x),
            reloaded=float(np.max(np.abs(_outputs(reloaded, x) - _outputs(pruned, x)))))
    return report


def _width_activations():
    """What ``criterion="activation"`` cuts of the head widths when block 2's query
    channel 1 has zero weights (every head) and its key channel 1 ten times the rest: a
    channel that adds nothing to the logits, which weight norms would keep."""
    import surgery

    model, x = _model()
    mha = model.get_layer(ENC).encoder_layers[1].mha
    qk, qb, kk, *rest = mha.get_weights()
    qk[..., 1], qb[..., 1], kk[..., 1] = 0.0, 0.0, 10 * kk[..., 1]
    mha.set_weights([qk, qb, kk, *rest])
    out = {}
    for criterion in ("activation", "l2"):
        p = surgery.plan(model, ratio=0.25, heads=False, head_dims=True, criterion=criterion,
                         data=x)
        out[criterion] = p.units[ENC].get("transformer_block_2/key_dim")
    return out


def _latency_tables():
    """What a latency plan removes when the tables price only blocks, or all but blocks
    (seconds over the kept count; the whole model takes 3), for a third of its time."""
    import surgery
    from surgery.calibration.latency import plan_for_latency
    from surgery.cost.table import LatencyTable
    from surgery.engine.zeroing import max_relative_difference
    from surgery.engine.graph import resolve
    from surgery.pruning.planning import PlanSpec

    model, x = _model()
    graph = resolve(model)
    out = {}
    for case, (block_time, width_time) in {"blocks_priced": ((1.0, 2.0, 3.0), 0.0),
                                           "blocks_flat": ((3.0, 3.0, 3.0), 0.1)}.items():
        tables = {f"{ENC}:blocks": LatencyTable([1, 2, 3], [0], [[t] for t in block_time])}
        for b in (1, 2, 3):
            tables[f"{ENC}:transformer_block_{b}/heads"] = LatencyTable(
                [1, 2, 4], [0], [[width_time * h] for h in (1, 2, 4)])
            tables[f"{ENC}:transformer_block_{b}/mlp_dim"] = LatencyTable(
                [8, 16, 32], [0], [[width_time * m / 8] for m in (8, 16, 32)])
        p = plan_for_latency(graph, 0.33, spec=PlanSpec(depth=True), tables=tables,
                             whole=3.0, check=False, round_to=1, progress=False)
        out[case] = dict(
            removed={axis: len(v) for axes in p.units.values() for axis, v in axes.items()
                     if v},
            predicted=p.settings["latency_predicted"],
            verify=surgery.verify(model, surgery.apply(model, p), p, x),
            moved=max_relative_difference(_outputs(model, x), _outputs(
                surgery.zero_channels(model, p.deletions, p.units), x)))
    return out


def run(out):
    import surgery
    from surgery.engine.zeroing import max_relative_difference

    report = {}
    model, x = _model()
    gone = surgery.PrunePlan.from_deletions({}, units={ENC: {"blocks": [1]}})
    zeroed = surgery.zero_channels(model, {}, gone.units)
    smaller = surgery.apply(model, gone)
    other = surgery.apply(model, surgery.PrunePlan.from_deletions({}, units={
        ENC: {"blocks": [2]}}))
    report["oracle"] = dict(
        verify=surgery.verify(model, smaller, gone, x),
        moved=max_relative_difference(_outputs(model, x), _outputs(zeroed, x)),
        wrong_block=surgery.verify(model, other, gone, x),
        params=[model.count_params(), smaller.count_params()],
        flops=[surgery.count_flops(model), surgery.count_flops(smaller)],
        blocks=len(smaller.get_layer(ENC).encoder_layers))

    _plant(model)
    planted = {f"{ENC}:blocks": [1], f"{ENC}:transformer_block_1/heads": [3],
               f"{ENC}:transformer_block_3/mlp_dim": [0, 1, 2, 3, 4]}
    oracle = surgery.PrunePlan.from_deletions({}, units={ENC: {
        k.split(":", 1)[1]: v for k, v in planted.items()}})
    share = 1 - surgery.apply(model, oracle).count_params() / model.count_params()
    plan = surgery.plan(model, params_target=share, depth=True)
    pruned = surgery.apply(model, plan)
    report["ranking"] = dict(
        planted=planted, share=share,
        removed={f"{layer}:{axis}": v for layer, axes in plan.units.items()
                 for axis, v in axes.items() if v},
        predicted=plan.settings["params_after"], measured=pruned.count_params(),
        verify=surgery.verify(model, pruned, plan, x))
    # the same ranking from data: Minitron's activations, inputs alone
    calibration = np.random.default_rng(3).normal(size=(32, 16, 16, 3)).astype("float32")
    by_data = surgery.plan(model, params_target=share, depth=True, criterion="activation",
                           data=calibration)
    report["ranking"]["removed_by_activation"] = {
        f"{layer}:{axis}": v for layer, axes in by_data.units.items()
        for axis, v in axes.items() if v}
    # the rule's NumPy pass agrees with Keras: block 1's change of the residual stream
    from surgery.engine.graph import resolve
    from surgery.engine.rules import rule_for

    node = next(n for n in resolve(model).calls() if n.layer.name == ENC)
    h = keras.ops.convert_to_numpy(keras.Model(model.inputs, node.inputs[0])(x))
    after = keras.ops.convert_to_numpy(model.get_layer(ENC).encoder_layers[0](h))
    numpy_change = rule_for(node.info).unit_activations(node.info, [h])["blocks"][:, 0]
    report["activation_check"] = float(np.max(np.abs(
        np.sqrt(np.square(after - h).sum(-1)).mean(1) - numpy_change)))
    # dead hidden channels (across RMS norms), a dead head and dead MLP units
    import transformer_models as tm

    rms = tm.vit(keras, norm="rms")
    deletions, groups, units = tm.plant_dead_units(rms)
    oracle = surgery.PrunePlan.from_deletions(deletions, groups, units=units)
    share = 1 - surgery.apply(rms, oracle).count_params() / rms.count_params()
    report["hidden"] = dict(planted=[deletions, units])
    for criterion in ("l1", "activation"):
        p = surgery.plan(rms, params_target=share - 1e-7, criterion=criterion,
                         data=calibration)
        report["hidden"][criterion] = [p.deletions, {
            layer: {a: v for a, v in axes.items() if v}
            for layer, axes in p.units.items() if any(axes.values())}]
    report["query_groups"] = _query_groups(out)
    # bias compensation in keras-hub's encoder: MLP units' means into dense_2's bias
    fresh, _ = _model()
    folded = surgery.plan(fresh, ratio=0.5, compensate=True, data=calibration)
    plain = surgery.apply(fresh, surgery.plan(fresh, ratio=0.5))
    small = surgery.apply(fresh, folded)
    record = folded.settings["compensation"]
    report["compensation"] = dict(
        folded=sorted(a for axes in record["units"].values() for a in axes),
        skipped=record["skipped"], verify=surgery.verify(fresh, small, folded, x),
        moved=max_relative_difference(_outputs(small, x), _outputs(plain, x)))
    report["latency_tables"] = _latency_tables()
    report["width_activations"] = _width_activations()
    path = os.path.join(out, "depth.keras")
    pruned.save(path)
    reloaded = keras.saving.load_model(path)
    report["reloaded"] = float(np.max(np.abs(_outputs(reloaded, x) - _outputs(pruned, x))))
    # keras-hub's exact GELU (an Erfc node) and position ids (a captured tensor) export
    surgery.export_onnx(pruned, os.path.join(out, "depth.onnx"), verify_with=x)
    onnx_y = surgery.onnx_predict(os.path.join(out, "depth.onnx"), x)
    report["onnx"] = float(np.max(np.abs(np.asarray(onnx_y) - _outputs(pruned, x))))
    print("RESULT " + json.dumps(report, default=str))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    {"run": run}[sys.argv[1]](sys.argv[2])
