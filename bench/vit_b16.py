"""ViT-B/16 at half its heads and half its MLP width, side by side with Torch-Pruning.

Builds ViT-B/16 (224x224x3, patch 16, 12 layers, 12 heads, hidden 768, MLP 3072, 1000
classes; random weights) from Keras layers (:func:`vit`), prunes half of every block's
heads and half of its MLP width with ``surgery.plan(model, ratio=0.5)`` (the hidden width
stays: it crosses mean-centred LayerNormalization, which is not exact), checks the cut
with ``surgery.verify`` on two images, and prints parameters, FLOPs
(``surgery.count_flops``, 2 x multiply-accumulates) and multiply-accumulates before and
after, next to Torch-Pruning's published row (86.57 M params / 17.59 G MACs -> 22.05 M /
4.61 G at 50 %; Torch-Pruning also halves the hidden width, inexactly). It then exports
both models to ONNX (``surgery.export_onnx``) and times them in ONNX Runtime (2 intra-op
threads, sequential execution) at batch 1 and 8: median of ``--runs`` timed runs after
warm-up, original and pruned interleaved run by run, so drift on a shared machine hits
both alike.

Why by hand, not keras-hub's ``ViTBackbone`` (which surgery prunes the same way: see
tests/test_keras3_hub.py): when this bench was written its ONNX export failed twice over
with Keras 3.15 / tf2onnx 1.17: TensorFlow's exact ``Gelu`` becomes an ``Erfc`` node ONNX
has no operator for, and the position ids it builds as a constant become a second graph
input. ``surgery.export_onnx`` now rewrites both (docs/transformers.md); the MLP here keeps
GELU's tanh form so that the rows measured before stay comparable.

``--params-target 0.5`` plans with ``surgery.plan(model, params_target=0.5)`` instead:
heads and MLP widths ranked together by importance (issue 30).

Run (Keras 3 on TensorFlow)::

    KERAS_BACKEND=tensorflow python bench/vit_b16.py
    KERAS_BACKEND=tensorflow python bench/vit_b16.py --params-target 0.5
    KERAS_BACKEND=tensorflow python bench/vit_b16.py --small --runs 3   # a quick check
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import keras  # noqa: E402  (Keras 3 first: surgery then works on Keras 3 models)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import surgery  # noqa: E402

TORCH_PRUNING = dict(params_before=86.57e6, macs_before=17.59e9,
                     params_after=22.05e6, macs_after=4.61e9)


def vit(small: bool) -> keras.Model:
    """ViT-B/16 written with Keras layers: a 16x16 stride-16 patch convolution, 12
    pre-norm blocks (LayerNormalization, MultiHeadAttention(12, 64), residual add,
    LayerNormalization, Dense 3072, GELU (tanh form), Dense 768, residual add), a final
    LayerNormalization and a 1000-class head on the mean token. Left out, next to the
    reference ViT-B/16: the class token and the position embeddings (0.15 M parameters,
    no multiply-accumulates; the head reads the mean token instead, 196 tokens not 197)."""
    from keras import layers, ops

    size, patch, depth, heads, hidden, mlp, classes = (32, 8, 2, 4, 32, 64, 10) if small \
        else (224, 16, 12, 12, 768, 3072, 1000)
    x = keras.Input((size, size, 3), name="images")
    h = layers.Conv2D(hidden, patch, strides=patch, name="patch_embed")(x)
    h = layers.Reshape(((size // patch) ** 2, hidden), name="tokens")(h)
    for i in range(depth):
        n = layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln1")(h)
        a = layers.MultiHeadAttention(heads, hidden // heads, name=f"block{i}_mha")(n, n)
        h = layers.Add(name=f"block{i}_add1")([h, a])
        n = layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln2")(h)
        f = ops.gelu(layers.Dense(mlp, name=f"block{i}_fc1")(n), approximate=True)
        h = layers.Add(name=f"block{i}_add2")([h, layers.Dense(hidden, name=f"block{i}_fc2")(f)])
    h = layers.LayerNormalization(epsilon=1e-6, name="final_ln")(h)
    y = layers.Dense(classes, name="head")(layers.GlobalAveragePooling1D(name="pool")(h))
    return keras.Model(x, y, name="vit_b16")


def onnx_session(model, path: str, threads: int):
    import onnxruntime as ort


    model(np.zeros((1,) + tuple(model.input_shape[1:]), "float32"))  # export needs a call
    surgery.export_onnx(model, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return session, session.get_inputs()[0].name


def time_interleaved(sessions: dict, x: np.ndarray, runs: int, warmup: int = 2) -> dict:
    times = {name: [] for name in sessions}
    for i in range(warmup + runs):
        for name, (session, input_name) in sessions.items():
            start = time.perf_counter()
            session.run(None, {input_name: x})
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a quick check at 32²")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--params-target", type=float, default=None,
                        help="plan with params_target= (heads, MLP widths and channels "
                             "ranked together) instead of ratio=0.5")
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(0)
    model = vit(args.small)
    t0 = time.perf_counter()
    plan = surgery.plan(model, params_target=args.params_target) \
        if args.params_target is not None else surgery.plan(model, ratio=0.5)
    print(f"planned in {time.perf_counter() - t0:.1f} s")
    pruned = surgery.apply(model, plan)
    size = model.input_shape[1]
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype("float32")
    error = surgery.verify(model, pruned, plan, x)

    rows = [("", "params", "FLOPs", "MACs")]
    figures = {}
    for name, m in (("original", model), ("pruned", pruned)):
        params, flops = m.count_params(), surgery.count_flops(m)
        figures[name] = (params, flops)
        rows.append((f"surgery {name}", f"{params / 1e6:.2f} M", f"{flops / 1e9:.2f} G",
                     f"{flops / 2e9:.2f} G"))
    rows.append(("Torch-Pruning original", f"{TORCH_PRUNING['params_before'] / 1e6:.2f} M",
                 "", f"{TORCH_PRUNING['macs_before'] / 1e9:.2f} G"))
    rows.append(("Torch-Pruning 50 %", f"{TORCH_PRUNING['params_after'] / 1e6:.2f} M",
                 "", f"{TORCH_PRUNING['macs_after'] / 1e9:.2f} G"))
    print(f"verify (max relative difference to the zeroed original): {error:.2e}")
    blocks = sorted({label.split("_")[0] for label in plan.sizes if label.startswith("block")},
                    key=lambda b: int(b[5:]))
    for block in dict.fromkeys([blocks[0], blocks[len(blocks) // 2], blocks[-1]]):
        print(f"{block}:", {label: f"{plan.sizes[label]} -> {plan.sizes[label] - n}"
                            for label, n in plan.removed.items() if label.startswith(block)})
    width = max(len(r[0]) for r in rows)
    for r in rows:
        print(f"| {r[0]:<{width}} | {r[1]:>9} | {r[2]:>8} | {r[3]:>8} |")
    print(f"params ratio {figures['pruned'][0] / figures['original'][0]:.3f}, "
          f"FLOPs ratio {figures['pruned'][1] / figures['original'][1]:.3f}")

    with tempfile.TemporaryDirectory() as folder:
        sessions = {name: onnx_session(m, os.path.join(folder, f"{name}.onnx"), args.threads)
                    for name, m in (("original", model), ("pruned", pruned))}
        for batch in args.batches:
            xb = np.random.default_rng(1).normal(size=(batch, size, size, 3)).astype("float32")
            t = time_interleaved(sessions, xb, args.runs)
            print(f"ONNX Runtime, {args.threads} threads, batch {batch}: original "
                  f"{t['original'] * 1e3:.1f} ms, pruned {t['pruned'] * 1e3:.1f} ms, "
                  f"ratio {t['pruned'] / t['original']:.3f}")


if __name__ == "__main__":
    main()
