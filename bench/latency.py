"""Inference latency of channel-pruned models against the original and tfmot's sparsity.

For each model (``weights=None``, 224x224x3) this script builds:

* ``original``: the model as built;
* ``pruned -Y%``: channel-pruned with ``surgery`` at the uniform per-group ratio (found by
  bisection, kept widths rounded to multiples of 8) whose FLOPs cut is nearest each target
  X %; labelled with the cut Y it actually makes;
* ``tfmot @ pruned -X%``: tfmot's ``prune_low_magnitude`` with constant sparsity chosen so
  that its non-zero parameters equal the channel-pruned model's parameters, stripped.

It then times ``model(x)`` under ``tf.function`` and the TFLite interpreter (2 threads,
XNNPack; the tfmot models converted with ``Optimize.EXPERIMENTAL_SPARSITY``, the way
tfmot's guide says to ship them) at batch 1 and batch 32. All variants of one model are
timed in the same process, interleaved run by run, and each figure is the median after
warm-up, so drift on a shared machine hits every variant alike. Printed: a markdown table
with each variant's FLOPs and parameter ratios next to its latency ratios (variant /
original; below 1 is faster).

Run (1 137 s, 19 min 12 s wall clock, measured on a 2-core CPU for all three targets;
``--targets 0.5`` alone took 497 s)::

    python bench/latency.py                       # MobileNetV2 and ResNet50, all targets
    python bench/latency.py --models MobileNetV2 --targets 0.5 --runs 5
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from quiet_tf import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()
import surgery  # noqa: E402  (selects the Keras 2 API first)
from surgery import keras, tf  # noqa: E402
from surgery.pipeline import sparsity  # noqa: E402
from _common import nonzero_params, tfmot_sparsity_for  # noqa: E402
from tqdm import tqdm  # noqa: E402

A = keras.applications
MODELS: Dict[str, Callable[[], keras.Model]] = {
    "MobileNetV2": lambda: A.MobileNetV2(weights=None, input_shape=(224, 224, 3)),
    "ResNet50": lambda: A.ResNet50(weights=None, input_shape=(224, 224, 3)),
}


@dataclasses.dataclass
class Variant:
    """One model to time: its Keras form, TFLite bytes, and what it costs on paper."""

    name: str
    model: keras.Model
    flops: int
    params: int          # parameters (non-zero ones for the tfmot variants)
    tflite: bytes = b""


# ----------------------------------------------------------------------------- variants

def channel_pruned(model: keras.Model, removed: float, flops_ref: int, round_to: int
                   ) -> keras.Model:
    """``model`` with about ``removed`` of ``flops_ref`` FLOPs cut away by surgery."""
    assert surgery.count_flops(model) == flops_ref
    p = surgery.plan(model, flops_target=removed, scope="local", criterion="l1",
                     round_to=round_to)
    return surgery.apply(model, p)


def tfmot_pruned(model: keras.Model, nonzero: int) -> keras.Model:
    """``model`` magnitude-pruned by tfmot until ``nonzero`` parameters are left. One
    training step with a zero learning rate lets tfmot's own ``UpdatePruningStep`` compute
    and apply the masks."""
    target = tfmot_sparsity_for(model, nonzero)
    wrapped = sparsity.prune_low_magnitude_model(model, "constant", target_sparsity=target,
                                                 begin_step=0, frequency=1)
    wrapped.compile(keras.optimizers.SGD(0.0), loss="categorical_crossentropy")
    x = np.zeros((1,) + tuple(model.input_shape[1:]), np.float32)
    y = np.eye(model.output_shape[-1], dtype=np.float32)[:1]
    wrapped.fit(x, y, epochs=1, verbose=0, callbacks=sparsity.pruning_callbacks())
    return sparsity.strip(wrapped)


def to_tflite(model: keras.Model, sparse: bool = False) -> bytes:
    """Float32 TFLite flatbuffer; ``sparse`` stores pruned kernels in a sparse format."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if sparse:
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    return converter.convert()


def build_variants(name: str, targets: List[float], round_to: int) -> List[Variant]:
    """The original, one channel-pruned model per target and a tfmot model beside each."""
    model = MODELS[name]()
    flops = surgery.count_flops(model)
    variants = [Variant("original", model, flops, model.count_params())]
    for target in targets:
        pruned = channel_pruned(model, target, flops, round_to)
        pruned_flops = surgery.count_flops(pruned)
        label = f"−{1 - pruned_flops / flops:.0%} FLOPs"
        variants.append(Variant(f"pruned, {label}", pruned, pruned_flops,
                                pruned.count_params()))
        sparse = tfmot_pruned(model, pruned.count_params())
        variants.append(Variant(f"tfmot, params of {label}", sparse, flops,
                                nonzero_params(sparse)))
    for v in tqdm(variants, desc=f"{name}: TFLite conversion", leave=False):
        v.tflite = to_tflite(v.model, sparse=v.name.startswith("tfmot"))
    return variants


# ----------------------------------------------------------------------------- runners

def tf_runner(model: keras.Model, batch: int) -> Callable[[], None]:
    """A call that runs ``model`` once on a fixed batch (graph mode, inference)."""
    x = tf.constant(np.random.default_rng(0).random(
        (batch,) + tuple(model.input_shape[1:]), dtype=np.float32))
    forward = tf.function(lambda t: model(t, training=False), autograph=False)
    return lambda: forward(x).numpy()


def tflite_runner(content: bytes, batch: int, threads: int) -> Callable[[], None]:
    """A call that runs a TFLite model once on a fixed batch."""
    import warnings

    with warnings.catch_warnings():  # tf.lite.Interpreter warns that it is deprecated
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_content=content, num_threads=threads)
    detail = interpreter.get_input_details()[0]
    shape = [batch] + list(detail["shape"][1:])
    interpreter.resize_tensor_input(detail["index"], shape)
    interpreter.allocate_tensors()
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    out = interpreter.get_output_details()[0]["index"]

    def run():
        interpreter.set_tensor(detail["index"], x)
        interpreter.invoke()
        interpreter.get_tensor(out)
    return run


def interleaved_medians(runners: Dict[str, Callable[[], None]], runs: int, warmup: int,
                        desc: str) -> Dict[str, float]:
    """Median seconds per call of each runner, the runners taking turns run by run
    (:func:`surgery.cost.timing.interleaved`, which the latency budgets time with too)."""
    from surgery.cost.timing import interleaved

    return interleaved(runners, runs=runs, warmup=warmup)


# ----------------------------------------------------------------------------- report

SETTINGS = [("TF", 1), ("TF", 32), ("TFLite", 1), ("TFLite", 32)]


def measure(variants: List[Variant], runs: int, runs_b1: int, threads: int, name: str
            ) -> Dict[tuple, Dict[str, float]]:
    """Median latency of every variant in each of :data:`SETTINGS`."""
    results = {}
    for engine, batch in SETTINGS:
        if engine == "TF":
            runners = {v.name: tf_runner(v.model, batch) for v in variants}
        else:
            runners = {v.name: tflite_runner(v.tflite, batch, threads) for v in variants}
        n = runs_b1 if batch == 1 else runs
        results[engine, batch] = interleaved_medians(
            runners, n, warmup=2, desc=f"{name}: {engine} batch {batch}")
        del runners
    return results


def table(name: str, variants: List[Variant], results) -> str:
    """Markdown rows: ratios are variant / original (latency in ms, ratio in brackets)."""
    base = variants[0]
    lines = []
    for v in variants:
        cells = [name, v.name, f"{v.params / 1e6:.2f}M ({v.params / base.params:.2f})",
                 f"{v.flops / 1e9:.2f}G ({v.flops / base.flops:.2f})"]
        for setting in SETTINGS:
            ms = 1000 * results[setting][v.name]
            ratio = results[setting][v.name] / results[setting][base.name]
            cells.append(f"{ms:.1f} ({ratio:.2f}×)")
        cells.append(f"{len(v.tflite) / 1e6:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


HEADER = ("| model | variant | params (×) | FLOPs (×) | TF b1 ms (×) | TF b32 ms (×) "
          "| TFLite b1 ms (×) | TFLite b32 ms (×) | .tflite MB |\n"
          "|---|---|---|---|---|---|---|---|---|")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--targets", nargs="+", type=float, default=[0.3, 0.5, 0.7],
                        help="fractions of FLOPs to remove")
    parser.add_argument("--runs", type=int, default=7, help="timed batch-32 runs per variant")
    parser.add_argument("--runs-b1", type=int, default=30,
                        help="timed batch-1 runs per variant")
    parser.add_argument("--round-to", type=int, default=8,
                        help="kept channel counts are multiples of this")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="TFLite interpreter threads (TensorFlow uses all cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    start = time.perf_counter()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, TFLite threads "
          f"{args.threads}; medians of {args.runs} (batch 32) / {args.runs_b1} (batch 1) "
          "interleaved runs\n")
    print(HEADER, flush=True)
    for name in args.models:
        keras.backend.clear_session()
        variants = build_variants(name, args.targets, args.round_to)
        results = measure(variants, args.runs, args.runs_b1, args.threads, name)
        print(table(name, variants, results), flush=True)
        del variants
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
