#!/usr/bin/env python
"""What the CLIs' oneDNN guard costs: fine-tuning speed of a small MobileNetV2 on the CPU with
TensorFlow's default oneDNN kernels, with ``TF_ENABLE_ONEDNN_OPTS=0`` (the guard) and with
``DNNL_MAX_CPU_ISA=AVX2``, each in its own process (TensorFlow reads both at import).

Prints one line per setting: seconds per epoch (median of the epochs after the first, which
includes tracing) and the exit status (a negative status is a crash).

Example::

    python bench/onednn_cost.py --epochs 4 --size 64
"""
import argparse
import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {"default (oneDNN, AVX-512)": {},
            "TF_ENABLE_ONEDNN_OPTS=0 (the guard)": {"TF_ENABLE_ONEDNN_OPTS": "0"},
            "DNNL_MAX_CPU_ISA=AVX2": {"DNNL_MAX_CPU_ISA": "AVX2"}}

CHILD = textwrap.dedent("""
    import json, statistics, sys, time
    sys.path.insert(0, {root!r})
    import numpy as np
    from surgery._backend import keras, tf
    from surgery.models import mobilenet_v2
    from surgery.pipeline.finetune import finetune
    keras.utils.set_random_seed(0)
    n, size = {n}, {size}
    x = np.random.default_rng(0).random((n, size, size, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(n) % 10, 10)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    model = mobilenet_v2(input_shape=(size, size, 3), classes=10)
    times = []
    class T(keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None): self.t = time.perf_counter()
        def on_epoch_end(self, e, logs=None): times.append(time.perf_counter() - self.t)
    finetune(model, ds, epochs={epochs}, lr=1e-3, warmup_epochs=0, verbose=0, callbacks=[T()])
    print("RESULT", json.dumps({{"epochs": times, "median_after_first":
                                 statistics.median(times[1:])}}))
""")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--images", type=int, default=512)
    args = p.parse_args()
    code = CHILD.format(root=ROOT, n=args.images, size=args.size, epochs=args.epochs)
    base = {k: v for k, v in os.environ.items()
            if k not in ("TF_ENABLE_ONEDNN_OPTS", "DNNL_MAX_CPU_ISA")}
    base["TF_CPP_MIN_LOG_LEVEL"] = "2"
    for name, extra in SETTINGS.items():
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=dict(base, **extra))
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        result = json.loads(line[7:]) if line else {}
        per_epoch = result.get("median_after_first")
        print(f"{name:<38} exit {proc.returncode:>4}  "
              + (f"{per_epoch:.2f} s/epoch  (epochs: "
                 f"{', '.join(f'{t:.2f}' for t in result['epochs'])})" if per_epoch else
                 "no result"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
