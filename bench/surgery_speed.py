"""How long surgery takes, against the floor of rebuilding the model.

For each model (weights=None, 224x224) it times, in one process, the "rebuild floor" —
``keras.models.clone_model(model)`` + ``set_weights``, the least any surgery that rebuilds
the model can cost — then ``surgery.plan(model, ratio=0.5)`` and ``surgery.apply(model,
plan)``, each once untimed and then ``--repeats`` times (median kept), and prints
apply / floor and (plan + apply) / floor. The pruned model is smaller than the original,
so rebuilding it costs less than the floor; the last column, apply against the floor of
the *pruned* model, is what surgery adds over rebuilding its own result.

``--keras 2`` (default) runs on tf-keras; ``--keras 3`` imports Keras 3 before
``surgery`` (the generation is read from argv before any import), on the backend given by
``--backend`` or ``KERAS_BACKEND`` (default tensorflow).

Run: python bench/surgery_speed.py [--keras 3 [--backend jax]] [--repeats 5] [--profile]
     [MODEL ...]
"""
from __future__ import annotations

import os
import sys


def _option(argv: list[str], flag: str):
    """The value of ``--flag X`` / ``--flag=X`` in ``argv``, or ``None``."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


GENERATION = _option(sys.argv[1:], "--keras") or "2"
if GENERATION == "3":  # Keras 3 must be imported before surgery, on its backend
    os.environ.pop("TF_USE_LEGACY_KERAS", None)
    os.environ["KERAS_BACKEND"] = (_option(sys.argv[1:], "--backend")
                                   or os.environ.get("KERAS_BACKEND") or "tensorflow")
    import keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import argparse  # noqa: E402
import cProfile  # noqa: E402
import gc  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import surgery  # noqa: E402  (with --keras 2 this selects the Keras 2 API first)

if GENERATION != "3":
    from surgery import keras  # noqa: E402,F811

A = keras.applications
MODELS = {
    "MobileNetV2": lambda: A.MobileNetV2(weights=None, input_shape=(224, 224, 3)),
    "ResNet50": lambda: A.ResNet50(weights=None, input_shape=(224, 224, 3)),
    "EfficientNetB0": lambda: A.EfficientNetB0(weights=None, input_shape=(224, 224, 3)),
    "DenseNet121": lambda: A.DenseNet121(weights=None, input_shape=(224, 224, 3)),
}


def timed(fn) -> tuple[float, object]:
    """``(seconds, result)`` of one call of ``fn``."""
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def floor(model):
    """The rebuild floor: a copy of ``model`` with its weights."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def measure(model, repeats: int) -> dict[str, float]:
    """Median seconds of the floor, plan, apply and the pruned model's floor; runs
    interleaved, one warm-up round first."""
    runs: dict[str, list[float]] = {"floor": [], "plan": [], "apply": [], "pruned": []}
    for i in range(repeats + 1):
        seconds, copy = timed(lambda: floor(model))
        del copy
        plan_s, plan = timed(lambda: surgery.plan(model, ratio=0.5))
        apply_s, pruned = timed(lambda: surgery.apply(model, plan))
        pruned_s, copy = timed(lambda: floor(pruned))
        del pruned, copy
        if i:  # the first round warms caches and traces up
            for k, v in zip(runs, (seconds, plan_s, apply_s, pruned_s)):
                runs[k].append(v)
    return {k: statistics.median(v) for k, v in runs.items()}


def describe() -> str:
    if GENERATION == "3":
        return f"Keras {keras.__version__}, backend {keras.backend.backend()}"
    return f"tf-keras {keras.__version__ if hasattr(keras, '__version__') else ''} (Keras 2)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keras", choices=("2", "3"), default="2",
                        help="Keras generation (read before any import)")
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"),
                        help="Keras 3 backend (default: $KERAS_BACKEND, else tensorflow)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median kept)")
    parser.add_argument("--profile", action="store_true",
                        help="print the top of a profile of surgery.apply")
    parser.add_argument("models", nargs="*", default=list(MODELS), help="which models")
    args = parser.parse_args(argv)
    print(f"{describe()}; median of {args.repeats} after one warm-up", flush=True)
    print(f"{'model':16} {'floor (s)':>10} {'plan (s)':>9} {'apply (s)':>10} "
          f"{'apply/floor':>12} {'(plan+apply)/floor':>19} {'apply/pruned floor':>19}",
          flush=True)
    for name in args.models:
        keras.backend.clear_session()
        model = MODELS[name]()
        t = measure(model, args.repeats)
        print(f"{name:16} {t['floor']:10.2f} {t['plan']:9.2f} {t['apply']:10.2f} "
              f"{t['apply'] / t['floor']:12.2f} "
              f"{(t['plan'] + t['apply']) / t['floor']:19.2f} "
              f"{t['apply'] / t['pruned']:19.2f}", flush=True)
        if args.profile:
            plan = surgery.plan(model, ratio=0.5)
            profiler = cProfile.Profile()
            profiler.runcall(surgery.apply, model, plan)
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
        del model
    return 0


if __name__ == "__main__":
    sys.exit(main())
