"""How far widths alone can cut a small ViT's latency in ONNX Runtime (batch 32, 2 threads).

Why bench/vit_fashion_mnist.py's widths-only plans miss half the latency: for keras-hub
``ViTBackbone`` classifiers of several sizes (28x28x1 inputs, random weights: latency does
not depend on them), each is cut by ``surgery.plan(ratio=r, criterion="l2", heads=True)``
(heads and MLP units, every block alike; the hidden width crosses LayerNormalizations and
stays) at ``r`` = 0.5 and 0.75, and the cut's latency is measured against the original's,
interleaved (``surgery.cost.timing.compare``, medians after warm-up). Printed: one row per
configuration with the FLOPs ratio and the latency ratio of each cut. When a cut to a
quarter of the FLOPs still takes about half the time, a plan for half the latency must cut
about three quarters of every width, whatever it ranks first. Last, the first ViT's time
with Keras's LayerNormalization chains as tf2onnx writes them (``opset=15``) and fused
into ``LayerNormalization`` nodes (:mod:`surgery.export.onnx_graph`; the default).

Run (Keras 3 on TensorFlow; about 3 minutes)::

    python bench/vit_latency_floor.py | tee bench/results/vit_latency_floor.txt
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vit_fashion_mnist as vit  # noqa: E402  (Keras 3 on TensorFlow, quietly; its ViT)

import surgery  # noqa: E402

#: (patch, blocks, heads, hidden, MLP) of each ViT measured
CONFIGS = ((7, 6, 4, 64, 128), (7, 6, 4, 64, 256), (4, 4, 4, 64, 128), (4, 6, 4, 64, 256),
           (7, 6, 4, 128, 256), (7, 4, 4, 128, 512), (4, 4, 4, 96, 384), (7, 4, 3, 192, 768),
           (7, 3, 4, 256, 512))
RATIOS = (0.5, 0.75)


def row(config: tuple, runs: int) -> str:
    patch, layers, heads, hidden, mlp = config
    base = vit.vit_classifier(argparse.Namespace(patch=patch, layers=layers, heads=heads,
                                                 hidden=hidden, mlp=mlp, dropout=0.0))
    timer = vit.Timer(base, runs)
    cells = []
    for r in RATIOS:
        cut = surgery.apply(base, surgery.plan(base, ratio=r, criterion="l2", heads=True))
        t = timer(cut)
        cells.append(f"{surgery.count_flops(cut) / surgery.count_flops(base):.3f} -> "
                     f"{t['ratio']:.3f} (± {t['spread']:.3f})")
    return (f"| p{patch} l{layers} h{heads} d{hidden} m{mlp} | {base.count_params():,} | "
            f"{t['before_ms']:.2f} | " + " | ".join(cells) + " |")


def layer_norm_fusion(runs: int) -> str:
    """The first ViT exported twice, at opset 15 (Keras's LayerNormalization chains left as
    tf2onnx writes them) and by default (fused into ``LayerNormalization`` nodes), timed
    interleaved in ONNX Runtime; the line to print."""
    import statistics
    import tempfile

    import numpy as np
    from surgery.cost.runtimes import get_runtime

    patch, layers, heads, hidden, mlp = CONFIGS[0]
    model = vit.vit_classifier(argparse.Namespace(patch=patch, layers=layers, heads=heads,
                                                  hidden=hidden, mlp=mlp, dropout=0.0))
    x = np.random.default_rng(0).random((vit.BATCH, 28, 28, 1), np.float32)
    model(x[:1])
    runtime = get_runtime("onnxruntime")
    times = {"opset 15, unfused": [], "fused (default)": []}
    with tempfile.TemporaryDirectory() as folder:
        sessions = {}
        for name, opset in zip(times, (15, None)):
            path = surgery.export_onnx(model, os.path.join(folder, f"{opset}.onnx"),
                                       opset=opset, verify_with=x[:4])
            with open(path, "rb") as f:
                sessions[name] = runtime.session(f.read(), vit.THREADS)
        feed = {sessions["fused (default)"].get_inputs()[0].name: x}
        for i in range(runs * 10 + 10):  # interleaved; the first 10 rounds warm up
            for name, session in sessions.items():
                start = time.perf_counter()
                session.run(None, feed)
                if i >= 10:
                    times[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    return (f"p{patch} l{layers} h{heads} d{hidden} m{mlp}: " +
            ", ".join(f"{name} {v:.2f} ms" for name, v in ms.items()) +
            f"; fused / unfused {ms['fused (default)'] / ms['opset 15, unfused']:.3f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=7, help="timed runs of each model")
    args = p.parse_args()
    start = time.time()
    print(f"ONNX Runtime, batch {vit.BATCH}, {vit.THREADS} threads; FLOPs ratio -> latency "
          "ratio of heads and MLP units cut at uniform ratio r (weight norm)\n")
    print("| ViT | params | ms (batch) | r = 0.5 | r = 0.75 |")
    print("|---|---:|---:|---:|---:|")
    for config in CONFIGS:
        print(row(config, args.runs), flush=True)
    print("\nLayerNormalization fused by surgery.export_onnx (medians of interleaved runs):")
    print(layer_norm_fusion(args.runs))
    print(f"\n{(time.time() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
