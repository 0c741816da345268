"""Latency-target plans against FLOPs-target plans, timed in the runtime they target.

For each model (tf-keras ``keras.applications``, ``weights=None``, ``--size``² RGB input),
runtime (ONNX Runtime, TFLite with XNNPACK) and batch size, and each target F, this script
makes two plans:

* ``flops``: ``surgery.plan(model, flops_target=F, round_to=--flops-round-to)``;
* ``latency``: ``surgery.plan(model, latency_target=F, runtime=R, batch_size=B,
  threads=--threads)``, which measures per-layer cost tables (the first time into a fresh
  cache folder, so planning time includes measuring them; then once more with the cached
  tables, for the planning time alone) and checks the plan by timing.

It then times the original and both pruned models interleaved, run by run, in one process
(after warm-up, rounds of ``--runs`` runs until both ratios' standard errors are within
``--stable``, at most ``--max-rounds``: :func:`surgery.cost.timing.time_until_stable`) and
prints a markdown table of latency ratios (pruned / original, each run against the
original's runs beside it, :func:`surgery.cost.timing.paired_ratio`, ± its standard error:
a target of 0.5 asks for 0.50), next to what the latency plan's own check measured (its ratio ±
standard error), and the planning times: the first target of each setting plans with a
fresh table folder (measuring the tables; later targets reuse them, but start with no scale
remembered for their target), and that first plan is then made once more (tables, scale,
whole-model time and converted models all cached). Models are tf-keras (Keras 2)
``keras.applications``.

Run (the full grid; on a quiet machine)::

    python bench/latency_target.py --threads 2
    python bench/latency_target.py --models MobileNetV2 --targets 0.5 --runtimes onnxruntime \\
        --batch 32                       # the headline figure
    python bench/latency_target.py --models MobileNetV2 --alpha 0.35 --size 96 --targets 0.5 \\
        --runtimes onnxruntime --batch 1 # a quick check that it runs
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from quiet_tf import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()
import surgery  # noqa: E402  (selects the Keras 2 API first)
from surgery import keras, tf  # noqa: E402
from surgery.cost import get_runtime, simd_block  # noqa: E402
from surgery.cost.timing import time_until_stable  # noqa: E402

A = keras.applications


def models(size: int, alpha: float) -> Dict[str, Callable[[], keras.Model]]:
    shape = (size, size, 3)
    return {
        "MobileNetV2": lambda: A.MobileNetV2(weights=None, input_shape=shape, alpha=alpha),
        "ResNet50": lambda: A.ResNet50(weights=None, input_shape=shape),
        "EfficientNetB0": lambda: A.EfficientNetB0(weights=None, input_shape=shape),
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["MobileNetV2", "ResNet50",
                                                        "EfficientNetB0"])
    parser.add_argument("--targets", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--runtimes", nargs="+", default=["onnxruntime", "tflite"],
                        choices=["onnxruntime", "tflite", "tensorflow"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2 width")
    parser.add_argument("--flops-round-to", type=int, default=8,
                        help="round_to of the FLOPs-target plans")
    parser.add_argument("--runs", type=int, default=25, help="timed runs per variant and "
                        "round")
    parser.add_argument("--stable", type=float, default=0.01,
                        help="time more rounds until every ratio's standard error is at most "
                             "this")
    parser.add_argument("--max-rounds", type=int, default=8)
    parser.add_argument("--cache", default=None,
                        help="cost-table folder (default: a fresh temporary one, so the "
                             "first plan of each setting measures its tables)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    builders = models(args.size, args.alpha)
    unknown = [m for m in args.models if m not in builders]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(builders)}")
    cache = args.cache or tempfile.mkdtemp(prefix="latency-target-bench-")
    os.environ["SURGERY_COST_CACHE"] = cache
    start = time.perf_counter()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, {args.threads} threads, "
          f"SIMD block {simd_block()}, {args.size}², tf-keras; cost tables in {cache}\n")
    print("| model | runtime | batch | target | FLOPs plan (×, ±) | latency plan (×, ±) | "
          "latency plan's check (×, ±) | plan s (first / same again) |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    checks = []
    for name in args.models:
        keras.backend.clear_session()
        model = builders[name]()
        flops_plans = {t: surgery.apply(model, surgery.plan(
            model, flops_target=t, round_to=args.flops_round_to)) for t in args.targets}
        for runtime in args.runtimes:
            rt = get_runtime(runtime)
            for batch in args.batch:
                original = rt.runners(model, batch, args.threads)[0]
                for k, target in enumerate(args.targets):
                    t0 = time.perf_counter()
                    p = surgery.plan(model, latency_target=target, runtime=runtime,
                                     batch_size=batch, threads=args.threads)
                    measuring = time.perf_counter() - t0
                    cached = ""
                    if k == 0:  # once per setting: the same plan with the tables cached
                        t0 = time.perf_counter()
                        surgery.plan(model, latency_target=target, runtime=runtime,
                                     batch_size=batch, threads=args.threads)
                        cached = f" / {time.perf_counter() - t0:.0f}"
                    lat = surgery.apply(model, p)
                    runners = {"original": original,
                               "flops": rt.runners(flops_plans[target], batch, args.threads)[0],
                               "latency": rt.runners(lat, batch, args.threads)[0]}
                    times: Dict[str, List[float]] = {}
                    ratio = {k: rounds[-1] for k, rounds in time_until_stable(
                        runners, runs=args.runs, stable=args.stable,
                        max_rounds=args.max_rounds, min_seconds=1.0, times=times).items()}
                    s = p.settings
                    check = f"{1 - s['latency_removed']:.3f} ±{s['latency_stability']:.3f}"
                    print(f"| {name} | {runtime} | {batch} | {target} | "
                          f"{ratio['flops'][0]:.3f} ±{ratio['flops'][1]:.3f} | "
                          f"{ratio['latency'][0]:.3f} ±{ratio['latency'][1]:.3f} | {check} | "
                          f"{measuring:.0f}{cached} |", flush=True)
                    checks.append(f"{name} {runtime} b{batch} {target}: "
                                  f"{s['latency_checks']} (bench: {len(times['original'])} "
                                  "runs)")
                    del runners, lat
                del original
        del flops_plans, model
    print("\nEach latency plan's checks, [predicted cut, measured cut, scale]:")
    for line in checks:
        print(f"- {line}")
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
