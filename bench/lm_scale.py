"""Surgery at scale: a 1 B-parameter Llama 3 (random weights, bfloat16) on JAX.

Issue 31, item 7. Builds ``keras_hub.models.Llama3Backbone`` (20 blocks, hidden 2048,
32 query heads in 8 key/value groups, MLP 5632, vocabulary 32,000, bfloat16), then times
each stage and measures the process's resident memory: build, ``surgery.plan`` (weight
norm), ``surgery.apply``, ``surgery.verify`` on a few tokens, and ``save`` as ``.keras``.

Memory: the peak of each stage is the kernel's high-water mark (``VmHWM``), reset at the
start of every stage (``/proc/self/clear_refs``), checked against a thread sampling
``VmRSS`` every 10 ms (which also says when within the stage the peak came) and against
``getrusage``'s ``ru_maxrss`` before the first reset (the imports' peak; the reset also
resets it, so the process's peak is the largest of the stages' and that one). The ratio
column is peak / the model's bytes (``count_params() * 2``, bfloat16).

Each budget runs in a process of its own (the process's peak is what the issue bounds).

Run: python bench/lm_scale.py [--budget params_target|ratio|both] [--layers 20]
"""
from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "jax"  # read once, when Keras is first imported
os.environ.pop("TF_USE_LEGACY_KERAS", None)

import argparse  # noqa: E402
import gc  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "lm_scale.txt")
GIB = 1024 ** 3


def _status(field: str) -> int:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    """Reset the kernel's high-water mark of this process (Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Sampler(threading.Thread):
    """Reads ``VmRSS`` every ``interval`` seconds; ``peak`` / ``peak_at`` per stage."""

    def __init__(self, interval: float = 0.01):
        super().__init__(daemon=True)
        self.interval, self.peak, self.peak_at, self.t0 = interval, 0, 0.0, time.perf_counter()
        self.running = True

    def reset(self):
        self.peak, self.peak_at, self.t0 = 0, 0.0, time.perf_counter()

    def run(self):
        while self.running:
            rss = _status("VmRSS")
            if rss > self.peak:
                self.peak, self.peak_at = rss, time.perf_counter() - self.t0
            time.sleep(self.interval)


def _measure(rows: list, sampler: Sampler, name: str, fn):
    gc.collect()
    _reset_peak()
    sampler.reset()
    start = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - start
    gc.collect()
    rows.append({"stage": name, "seconds": seconds, "end": _status("VmRSS"),
                 "peak": max(_status("VmHWM"), sampler.peak), "peak_at": sampler.peak_at})
    print(f"  {name}: {seconds:.1f} s, peak {rows[-1]['peak'] / GIB:.2f} GiB", flush=True)
    return value


def run_budget(budget: str, layers: int) -> str:
    """Run every stage for one budget in this process; the table as text."""
    import keras
    import keras_hub
    import numpy as np

    import surgery

    sampler = Sampler()
    sampler.start()
    rows: list = []
    base = {"rss": _status("VmRSS"),
            "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}

    def build():
        return keras_hub.models.Llama3Backbone(
            vocabulary_size=32000, num_layers=layers, hidden_dim=2048, num_query_heads=32,
            num_key_value_heads=8, intermediate_dim=5632, dtype="bfloat16")

    model = _measure(rows, sampler, "build", build)
    nbytes = model.count_params() * 2
    kwargs = {"params_target": 0.5} if budget == "params_target" else {"ratio": 0.5}
    plan = _measure(rows, sampler, "plan", lambda: surgery.plan(model, **kwargs))
    small = _measure(rows, sampler, "apply", lambda: surgery.apply(model, plan))
    x = {"token_ids": np.arange(1, 9, dtype="int32")[None],
         "padding_mask": np.ones((1, 8), "int32")}
    diff = _measure(rows, sampler, "verify", lambda: surgery.verify(model, small, plan, x))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "small.keras")
        _measure(rows, sampler, "save", lambda: small.save(path))
        size = os.path.getsize(path)
    sampler.running = False
    maxrss = max([base["maxrss"]] + [r["peak"] for r in rows])
    lines = [f"## {budget}=0.5, {layers} blocks, keras {keras.__version__}, "
             f"keras-hub {keras_hub.__version__}, JAX backend",
             f"model: {model.count_params():,} params, {nbytes / GIB:.2f} GiB (bf16); "
             f"cut: {small.count_params():,} params "
             f"({small.count_params() / model.count_params():.3f}); .keras {size / GIB:.2f} GiB",
             f"verify (bf16, max relative difference): {diff:.3g}",
             f"RSS after imports: {base['rss'] / GIB:.2f} GiB; process peak: "
             f"{maxrss / GIB:.2f} GiB = {maxrss / nbytes:.2f}x model; total "
             f"{sum(r['seconds'] for r in rows):.1f} s; load average at the end "
             f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)", "",
             "| stage | seconds | RSS at end (GiB) | peak in stage (GiB) | peak / model "
             "| peak at (s into stage) |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['stage']} | {r['seconds']:.1f} | {r['end'] / GIB:.2f} | "
              f"{r['peak'] / GIB:.2f} | {r['peak'] / nbytes:.2f}x | {r['peak_at']:.1f} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", default="both",
                        choices=("params_target", "ratio", "both"))
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    if args.child:
        print(run_budget(args.budget, args.layers), flush=True)
        return
    budgets = ("params_target", "ratio") if args.budget == "both" else (args.budget,)
    tables = []
    for budget in budgets:  # one process each: each budget's own process peak
        print(f"# {budget}", flush=True)
        done = subprocess.run([sys.executable, __file__, "--child", "--budget", budget,
                               "--layers", str(args.layers)], capture_output=True,
                              text=True)
        sys.stderr.write(done.stderr[-3000:] if done.returncode else "")
        out = done.stdout
        print(out, flush=True)
        tables.append(out[out.find("## "):] if "## " in out else out)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(tables))


if __name__ == "__main__":
    main()
