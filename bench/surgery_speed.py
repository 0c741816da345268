"""How long surgery.prune takes, against the floor of copying the model.

For each model (weights=None, 224x224), times `surgery.prune(model, ratio=0.5)` and
`keras.models.clone_model(model)` + `set_weights` in the same process, best of N runs
each, and prints the ratio. Run: python bench/surgery_speed.py [--repeats 3] [--profile]
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import surgery  # noqa: E402  (selects the Keras 2 API first)
from surgery import keras  # noqa: E402

A = keras.applications
MODELS = {
    "MobileNetV2": lambda: A.MobileNetV2(weights=None, input_shape=(224, 224, 3)),
    "ResNet50": lambda: A.ResNet50(weights=None, input_shape=(224, 224, 3)),
    "EfficientNetB0": lambda: A.EfficientNetB0(weights=None, input_shape=(224, 224, 3)),
    "DenseNet121": lambda: A.DenseNet121(weights=None, input_shape=(224, 224, 3)),
}


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def clone(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing (best kept)")
    parser.add_argument("--profile", action="store_true", help="print the top of a profile")
    parser.add_argument("models", nargs="*", default=list(MODELS), help="which models")
    args = parser.parse_args(argv)
    print(f"{'model':16} {'clone+set (s)':>14} {'prune 0.5 (s)':>14} {'ratio':>6}")
    for name in args.models:
        keras.backend.clear_session()
        model = MODELS[name]()
        floor = best_of(lambda: clone(model), args.repeats)
        prune = best_of(lambda: surgery.prune(model, ratio=0.5), args.repeats)
        print(f"{name:16} {floor:14.2f} {prune:14.2f} {prune / floor:6.2f}", flush=True)
        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(surgery.prune, model, ratio=0.5)
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
