"""``surgery.plan(model, flops_target=F)`` on MobileNetV2, ResNet50 and EfficientNetB0
(keras.applications, weights=None, 224×224×3, 1000 classes) for F = 0.3, 0.5, 0.7: the
fraction of FLOPs each plan removes, measured by surgery and ``count_flops``, and the time
planning took. Prints one line per case; exits 1 if a case misses by more than 2 points.

Example::

    python bench/flops_target.py
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import surgery  # noqa: E402  (selects the Keras 2 API first)
from surgery import keras  # noqa: E402

A = keras.applications
MODELS = {
    "MobileNetV2": lambda: A.MobileNetV2(weights=None, input_shape=(224, 224, 3)),
    "ResNet50": lambda: A.ResNet50(weights=None, input_shape=(224, 224, 3)),
    "EfficientNetB0": lambda: A.EfficientNetB0(weights=None, input_shape=(224, 224, 3)),
}
TARGETS = (0.3, 0.5, 0.7)


def main() -> int:
    misses = 0
    print("| model | target | reached | miss (points) | plan s | surgery s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, build in MODELS.items():
        model = build()
        before = surgery.count_flops(model)
        for target in TARGETS:
            t0 = time.perf_counter()
            p = surgery.plan(model, flops_target=target)
            t1 = time.perf_counter()
            reached = 1.0 - surgery.count_flops(surgery.apply(model, p)) / before
            t2 = time.perf_counter()
            miss = 100 * (reached - target)
            misses += abs(miss) > 2
            print(f"| {name} | {target:.0%} | {reached:.2%} | {miss:+.2f} | {t1 - t0:.2f} | "
                  f"{t2 - t1:.2f} |", flush=True)
        keras.backend.clear_session()
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
