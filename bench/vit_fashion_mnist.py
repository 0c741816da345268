"""Fashion-MNIST, a keras-hub ViT pruned to half its latency: four plans compared.

A small Vision Transformer (Keras 3, TensorFlow backend) is built on keras-hub's
``ViTBackbone`` (random initialisation, nothing downloaded): 28x28x1 images, 7x7 patches
(16 tokens and a class token), 6 pre-norm blocks of 4 heads, hidden width 64, MLP width
256 (4 times the hidden width, as in ViT-B; exact GELU), then the class token ->
``Dense(10, softmax)`` (305 k parameters, 10.5 M FLOPs an image). It is trained once on
Fashion-MNIST's training images (57,000; 3,000 held out for validation;
``surgery.data.load_splits("fashion_mnist")``, Debian's ``dataset-fashion-mnist``) with
Adam under a linear warmup and cosine decay (``surgery.pipeline.finetune.finetune``) and
random horizontal flips, and cached as ``.keras`` in ``--work-dir`` (saved atomically), so
later runs skip training. The test split is the official 10,000 images.

It is then pruned to half its measured latency (ONNX Runtime, batch 32, 2 threads; the
original and the pruned model timed interleaved, ``surgery.cost.timing.compare``) four
ways:

* ``channels only``: ``surgery.plan(latency_target=0.5, runtime="onnxruntime",
  batch_size=32, threads=2, units=False)``;
* ``uniform weight norm`` (Torch-Pruning's way): ``surgery.plan(ratio=r, criterion="l2",
  heads=True)``, ``r`` bisected until the measured latency ratio is within ``--tolerance``
  of 0.5;
* ``global activation``: ``surgery.plan(latency_target=0.5, ..., criterion="activation",
  data=x_calib, candidates=N)`` (``--calib`` training images; ``--candidates`` N, default
  8: allocations trading kinds of unit, the closest to the original on them kept);
* ``global activation + depth``: the same with ``depth=True``;
* (only when named in ``--variants``) ``global activation + head widths``: the same with
  ``head_dims=True`` (each block's key and value widths offered too).

A plan that cannot be made (a ``surgery.SurgeryError``: on this ViT, "channels only" has
nothing to cut, since the hidden width crosses mean-centred LayerNorms and every other
width is a unit), or one that removes nothing, is recorded as "not available" with one
log line, and the run goes on. Each cut is checked with ``surgery.verify``,
measured (latency, FLOPs and parameter ratios, accuracy right after the cut) and
fine-tuned with the same budget (``--finetune-epochs``, Adam, warmup + cosine, peak
``--lr``) for each of ``--seeds``. Printed (and written with ``--markdown``): a table of
baseline + 4 plans with accuracy after fine-tuning as mean ± std over the seeds; ``--json``
writes every raw number, ``--plot`` an accuracy-vs-latency-ratio PNG; the last lines say
PASS/FAIL for the acceptance checks (baseline >= 88 %; each global activation plan,
with and without depth, within 1.5 points of the baseline after fine-tuning and >= 1 point
above uniform weight norm). The results of the lead's run: bench/results/vit_fashion_mnist.md.

keras-hub's ViT exports to ONNX through ``surgery.export_onnx``, which rewrites the
exact GELU's ``Erfc`` node and keeps the position ids a constant (docs/transformers.md).

Run (Keras 3 on TensorFlow; the baseline is trained once, then cached)::

    python bench/vit_fashion_mnist.py --json bench/results/vit_fashion_mnist.json \\
        --markdown bench/results/vit_fashion_mnist.md --plot bench/results/vit_fashion_mnist.png
    python bench/vit_fashion_mnist.py --quick      # smoke test: 6,000 images, 1 seed, 1 epoch
    python bench/vit_fashion_mnist.py --train-only # just train (or load) the baseline

Measured on this 2-core machine: training the baseline (20 epochs of 57,000 images,
batch 128, peak lr 2e-3, 2 warmup epochs, flips) took 17.4 min, about 52 s an epoch, and
reached 88.90 % test accuracy (train 95.4 %, validation 88.9 %; with ``--mlp 128``,
88.99 %); the four plans with 4 fine-tuning epochs and 3 seeds took 18.6 min;
``--quick`` with the baseline and the cost tables cached took 2.0 min. The first
latency-target plan also measures surgery's cost tables (a few dozen micro-models, cached
in ``WORK_DIR/cost-cache`` unless ``SURGERY_COST_CACHE`` is set): a few minutes more.
``KERAS_SURGERY_AVOID_ONEDNN_CRASH=1`` turns TensorFlow's oneDNN kernels off first (slower;
see docs/pipeline.md), should a fit crash on an AVX-512 CPU.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Optional

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.pop("TF_USE_LEGACY_KERAS", None)  # Keras 3 first: surgery then works on Keras 3
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import quiet_tf  # noqa: E402

if os.environ.get("KERAS_SURGERY_AVOID_ONEDNN_CRASH", "").lower() in ("1", "true", "yes"):
    quiet_tf.avoid_onednn_crash()
_keras3_quietly = getattr(getattr(quiet_tf, "_startup", None), "import_keras3_quietly", None)
if _keras3_quietly is not None:
    _keras3_quietly()  # Keras 3, then TensorFlow, with TensorFlow's C++ start-up muted
import keras  # noqa: E402

quiet_tf.import_tensorflow_quietly()  # TensorFlow is in: only tf-keras and devices, quietly

import surgery  # noqa: E402
from surgery.data import DataError, as_arrays, load_splits  # noqa: E402
from surgery.export.saving import save_model_atomic  # noqa: E402
from surgery.pipeline.finetune import evaluate_accuracy, finetune  # noqa: E402
from _outputs import add_output_arguments, read_json, write_json  # noqa: E402
from _plots import accuracy_vs_latency  # noqa: E402

logger = logging.getLogger("bench.vit_fashion_mnist")

THREADS = 2
BATCH = 32
RUNTIME = "onnxruntime"
GOAL = 0.5  # the latency ratio every plan aims at
VARIANTS = ("channels only", "uniform weight norm", "global activation",
            "global activation + depth")
#: run when named in ``--variants`` (not by default): the global plan with head widths
EXTRA_VARIANTS = ("global activation + head widths",)


# ----------------------------------------------------------------------------- model


def vit_classifier(args, input_shape=(28, 28, 1), classes=10) -> keras.Model:
    """keras-hub's ``ViTBackbone`` -> class token -> ``Dense(classes, softmax)``."""
    import keras_hub

    backbone = keras_hub.models.ViTBackbone(
        image_shape=tuple(input_shape), patch_size=args.patch, num_layers=args.layers,
        num_heads=args.heads, hidden_dim=args.hidden, mlp_dim=args.mlp,
        dropout_rate=args.dropout, name="vit")
    x = keras.Input(tuple(input_shape), name="image")
    tokens = backbone(x)
    y = keras.layers.Dense(classes, activation="softmax", name="head")(tokens[:, 0])
    return keras.Model(x, y, name="vit_fmnist")


def baseline_tag(args) -> str:
    return (f"p{args.patch}_l{args.layers}_h{args.heads}_d{args.hidden}_m{args.mlp}"
            f"_e{args.baseline_epochs}_n{args.baseline_limit or 'all'}")


def baseline(splits, args):
    """The trained baseline and its record (training time...): loaded from the cache in
    ``--work-dir`` when there, else trained and saved (atomically). ``--quick`` uses the
    full baseline when cached, else trains its own on fewer images for one epoch."""
    full = os.path.join(args.work_dir, f"baseline_{baseline_tag(args)}.keras")
    path = full
    if args.quick and not os.path.isfile(full):
        args.baseline_epochs, args.baseline_limit = 1, args.train_limit
        path = os.path.join(args.work_dir, f"baseline_{baseline_tag(args)}.keras")
    meta_path = path[:-len(".keras")] + ".json"
    if os.path.isfile(path):
        logger.info("baseline: cached %s", path)
        meta = read_json(meta_path)
        return keras.models.load_model(path, compile=False), dict(meta, path=path, cached=True)
    keras.utils.set_random_seed(0)
    model = vit_classifier(args, splits.input_shape, splits.num_classes)
    logger.info("baseline: training %s (%d parameters, %d FLOPs) for %d epochs", path,
                model.count_params(), surgery.count_flops(model), args.baseline_epochs)
    train = limited(splits.train, args.baseline_limit, args.flip)
    start = time.time()
    history = finetune(model, train, splits.val, epochs=args.baseline_epochs,
                       lr=args.baseline_lr, warmup_epochs=min(2.0, args.baseline_epochs / 4),
                       verbose=args.verbose, stage="training the baseline",
                       callbacks=[EpochLog("baseline", args.baseline_epochs)])
    seconds = time.time() - start
    save_model_atomic(model, path)
    meta = dict(train_seconds=seconds, epochs=args.baseline_epochs, lr=args.baseline_lr,
                flip=args.flip, history={k: [float(v) for v in vs]
                                         for k, vs in history.history.items()})
    write_json(meta_path, meta)
    logger.info("baseline: trained in %.1f min, saved %s", seconds / 60, path)
    return model, dict(meta, path=path, cached=False)


class EpochLog(keras.callbacks.Callback):
    """One log line an epoch: loss, accuracy, validation accuracy, seconds."""

    def __init__(self, stage: str, epochs: int):
        super().__init__()
        self.stage, self.epochs, self.start = stage, epochs, time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        logger.info("%s epoch %d/%d: loss %.4f, acc %.4f, val_acc %.4f (%.0f s)", self.stage,
                    epoch + 1, self.epochs, logs.get("loss", float("nan")),
                    logs.get("accuracy", float("nan")),
                    logs.get("val_accuracy", float("nan")), time.time() - self.start)


def limited(train, limit: Optional[int], flip: bool):
    """The training split, cut to ``limit`` images (reshuffled each epoch), with random
    horizontal flips when ``flip``."""
    from surgery._backend import tf

    if limit:
        x, y = as_arrays(train, limit=limit)
        train = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
            len(x), seed=0, reshuffle_each_iteration=True).batch(128)
    if flip:
        def flipped(x, y):  # a def, not a lambda: AutoGraph reads its source
            return tf.image.random_flip_left_right(x), y

        train = train.map(flipped, num_parallel_calls=tf.data.AUTOTUNE)
    return train.prefetch(2)


# ----------------------------------------------------------------------------- measuring


class Timer:
    """The measured latency ratio of a model over the baseline (ONNX Runtime, batch 32,
    2 threads): ``surgery.cost.timing.compare`` with the baseline's runner made once."""

    def __init__(self, base, runs: int):
        from surgery.cost.runtimes import get_runtime

        self.base, self.runs = base, runs
        self.runtime = get_runtime(RUNTIME)
        self.base_run = self.runtime.runners(base, BATCH, THREADS)[0]

    def __call__(self, model) -> dict:
        from surgery.cost.timing import compare

        runners = {"original": self.base_run,
                   "pruned": self.runtime.runners(model, BATCH, THREADS)[0]}
        c = compare(self.base, model, runtime=RUNTIME, batch_size=BATCH, threads=THREADS,
                    runs=self.runs, runners=runners)
        return dict(ratio=float(c["ratio"]), spread=float(c["spread"]),
                    before_ms=1e3 * c["before"], after_ms=1e3 * c["after"])


def kept_summary(plan) -> Dict[str, List[int]]:
    """Per unit kind (``heads``, ``mlp_dim``, ``channels``, ...): ``[kept, before]`` summed
    over the plan's cuts."""
    out: Dict[str, List[int]] = {}
    for cut in plan.cuts:
        unit = str(cut.unit).rsplit("/", 1)[-1]  # "transformer_block_1/heads" -> "heads"
        kept, size = out.setdefault(unit, [0, 0])
        out[unit] = [kept + cut.size - cut.removed, size + cut.size]
    return out


def kept_text(kept: Optional[Dict[str, List[int]]]) -> str:
    if not kept:
        return ""
    return ", ".join(f"{unit} {k}/{n}" for unit, (k, n) in sorted(kept.items()))


# ----------------------------------------------------------------------------- plans


def plan_kwargs(name: str, x_calib, candidates: int = 1) -> dict:
    """``surgery.plan``'s arguments for a latency-target variant."""
    common = dict(latency_target=GOAL, runtime=RUNTIME, batch_size=BATCH, threads=THREADS)
    if name == "channels only":
        return dict(common, units=False)
    ours = dict(common, criterion="activation", data=x_calib, candidates=candidates)
    if name == "global activation":
        return ours
    if name == "global activation + depth":
        return dict(ours, depth=True)
    if name == "global activation + head widths":
        return dict(ours, head_dims=True)
    raise ValueError(name)


def uniform_plan(base, timer: Timer, tolerance: float, steps: int):
    """``plan(ratio=r, criterion="l2", heads=True)`` with ``r`` bisected until the measured
    latency ratio is within ``tolerance`` of ``GOAL`` (the ratio falls as ``r`` rises);
    the nearest plan found, its ``r`` and its timing."""
    lo, hi, r, best = 0.0, 0.95, 0.5, None
    for step in range(steps):
        p = surgery.plan(base, ratio=r, criterion="l2", heads=True)
        timing = timer(surgery.apply(base, p))
        logger.info("uniform weight norm: ratio %.3f -> latency ratio %.3f (± %.3f)", r,
                    timing["ratio"], timing["spread"])
        if best is None or abs(timing["ratio"] - GOAL) < abs(best[2]["ratio"] - GOAL):
            best = (p, r, timing)
        if abs(timing["ratio"] - GOAL) <= tolerance:
            break
        lo, hi = (r, hi) if timing["ratio"] > GOAL else (lo, r)
        r = (lo + hi) / 2
    return best


def make_plan(name: str, base, timer: Timer, x_calib, args):
    """``(plan, extra record)``, or ``(None, {"status": "not available: ..."})``."""
    start = time.time()
    try:
        if name == "uniform weight norm":
            p, r, timing = uniform_plan(base, timer, args.tolerance, args.search_steps)
            extra = dict(uniform_ratio=r, timing=timing)
        else:
            p, extra = surgery.plan(base, **plan_kwargs(name, x_calib, args.candidates)), {}
    except (TypeError, surgery.SurgeryError) as exc:
        reason = " ".join(str(exc).split())[:400] or type(exc).__name__
        logger.info("%s: not available: %s", name, reason)
        return None, dict(status=f"not available: {reason}")
    except Exception as exc:  # noqa: BLE001  (a benchmark goes on to the other plans)
        logger.exception("%s: planning failed", name)
        return None, dict(status=f"failed: {type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())[:400]}")
    extra["plan_seconds"] = time.time() - start
    if p.empty:
        logger.info("%s: not available: the plan removes nothing", name)
        return None, dict(extra, status="not available: the plan removes nothing")
    logger.info("%s: planned in %.0f s", name, extra["plan_seconds"])
    return p, dict(extra, status="ok")


def run_variant(name, base, p, extra, splits, args, timer: Timer, x_check, folder) -> dict:
    """Cut, check, measure, fine-tune for every seed; the variant's record."""
    cut = surgery.apply(base, p)
    try:
        verify = float(surgery.verify(base, cut, p, x_check))
    except Exception as exc:  # noqa: BLE001  (e.g. a depth cut is not a zeroing)
        logger.info("%s: verify not applicable (%s)", name, type(exc).__name__)
        verify = None
    timing = extra.pop("timing", None) or timer(cut)
    acc_cut = evaluate_accuracy(cut, splits.test)
    path = os.path.join(folder, name.replace(" ", "_").replace("+", "plus") + ".keras")
    save_model_atomic(cut, path)
    accs, train = [], limited(splits.train, args.train_limit, args.flip)
    for seed in args.seeds:
        keras.utils.set_random_seed(seed)
        model = keras.models.load_model(path, compile=False)
        start = time.time()
        finetune(model, train, splits.val, epochs=args.finetune_epochs, lr=args.lr,
                 warmup_epochs=min(1.0, args.finetune_epochs / 2), verbose=args.verbose,
                 stage=f"{name} seed {seed}",
                 callbacks=[EpochLog(f"{name} seed {seed}", args.finetune_epochs)])
        accs.append(evaluate_accuracy(model, splits.test))
        logger.info("%s seed %d: %.4f after %.0f s of fine-tuning", name, seed, accs[-1],
                    time.time() - start)
    record = dict(extra, variant=name, latency_ratio=timing["ratio"],
                  latency_spread=timing["spread"], latency_ms=timing["after_ms"],
                  flops_ratio=surgery.count_flops(cut) / surgery.count_flops(base),
                  params_ratio=cut.count_params() / base.count_params(),
                  params=int(cut.count_params()), kept=kept_summary(p), verify=verify,
                  acc_cut=acc_cut, accs=accs, mean=statistics.mean(accs),
                  std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
                  plan=json.loads(p.to_json()))
    logger.info("%s: latency %.3f, FLOPs %.3f, params %.3f, after cut %.4f, fine-tuned %s",
                name, record["latency_ratio"], record["flops_ratio"], record["params_ratio"],
                acc_cut, [round(a, 4) for a in accs])
    return record


# ----------------------------------------------------------------------------- output


def table(acc_base: float, base_ms: float, rows: List[dict], seeds: int) -> str:
    lines = ["| variant | latency (ONNX Runtime, batch 32, 2 threads) | FLOPs | params "
             "| kept | after cut | fine-tuned (mean ± std, "
             f"{seeds} seed{'s' if seeds > 1 else ''}) |",
             "|---|---:|---:|---:|---|---:|---:|",
             f"| baseline | 1.000 ({base_ms:.2f} ms) | 1.000 | 1.000 | | "
             f"| {acc_base * 100:.2f} % |"]
    for r in rows:
        if r["status"] != "ok":
            status = r["status"] if len(r["status"]) <= 90 else r["status"][:87] + "..."
            lines.append(f"| {r['variant']} | {status} | | | | | |")
            continue
        lines.append(f"| {r['variant']} | {r['latency_ratio']:.3f} ± {r['latency_spread']:.3f}"
                     f" | {r['flops_ratio']:.3f} | {r['params_ratio']:.3f} "
                     f"| {kept_text(r['kept'])} | {r['acc_cut'] * 100:.2f} % "
                     f"| {r['mean'] * 100:.2f} ± {r['std'] * 100:.2f} % |")
    return "\n".join(lines)


def checks(acc_base: float, rows: List[dict]) -> List[str]:
    """The acceptance checks, one line each (PASS, FAIL or N/A): the baseline, then for
    each global activation plan (with and without depth) how far it ends below the
    baseline and how far above the uniform weight-norm plan."""
    by = {r["variant"]: r for r in rows if r["status"] == "ok"}
    uni = by.get("uniform weight norm")
    out = [f"{'PASS' if acc_base >= 0.88 else 'FAIL'}: baseline {acc_base * 100:.2f} % "
           ">= 88 %"]
    for name in ("global activation", "global activation + depth"):
        act = by.get(name)
        if act is None:
            out.append(f"N/A: {name} within 1.5 points of the baseline (plan not available)")
            continue
        gap = (acc_base - act["mean"]) * 100
        out.append(f"{'PASS' if gap <= 1.5 else 'FAIL'}: {name} {act['mean'] * 100:.2f} % is "
                   f"{gap:.2f} points below the baseline (<= 1.5)")
        if uni is None:
            out.append(f"N/A: {name} >= 1 point above uniform weight norm (not available)")
            continue
        lead = (act["mean"] - uni["mean"]) * 100
        out.append(f"{'PASS' if lead >= 1.0 else 'FAIL'}: {name} leads uniform weight norm "
                   f"by {lead:.2f} points (>= 1)")
    return out


def plot(acc_base: float, rows: List[dict], path: str) -> str:
    return accuracy_vs_latency(acc_base, rows, path, GOAL,
                               "Fashion-MNIST, keras-hub ViT pruned to half its latency")


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument_group("the ViT (keras-hub ViTBackbone)")
    a.add_argument("--patch", type=int, default=7, choices=(4, 7))
    a.add_argument("--layers", type=int, default=6)
    a.add_argument("--heads", type=int, default=4)
    a.add_argument("--hidden", type=int, default=64)
    a.add_argument("--mlp", type=int, default=256)
    a.add_argument("--dropout", type=float, default=0.0)
    a.add_argument("--baseline-epochs", type=int, default=20)
    a.add_argument("--baseline-lr", type=float, default=2e-3, help="peak learning rate")
    a.add_argument("--baseline-limit", type=int, default=None,
                   help="train the baseline on this many images only")
    a.add_argument("--no-flip", dest="flip", action="store_false",
                   help="no random horizontal flips while training and fine-tuning")
    p.add_argument("--tolerance", type=float, default=0.03,
                   help="how near the uniform plan's latency ratio must come to 0.5")
    p.add_argument("--search-steps", type=int, default=8,
                   help="bisection steps for the uniform plan's ratio")
    p.add_argument("--runs", type=int, default=7,
                   help="interleaved timing runs per round (compare's runs)")
    p.add_argument("--candidates", type=int, default=8,
                   help="allocations the global activation plans compare on the calibration "
                        "images (surgery.plan(candidates=N))")
    p.add_argument("--calib", type=int, default=512,
                   help="training images the activation criterion reads")
    p.add_argument("--finetune-epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3, help="peak fine-tuning learning rate")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train-limit", type=int, default=None,
                   help="fine-tune on this many training images only (test stays whole)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS),
                   choices=VARIANTS + EXTRA_VARIANTS, metavar="NAME",
                   help=f"which plans to run, of: {'; '.join(VARIANTS + EXTRA_VARIANTS)}")
    add_output_arguments(
        p, work_dir="/tmp/vit_fmnist",
        work="where the trained baseline is cached and cut models are written",
        plot="accuracy-vs-latency PNG", measure="accuracy",
        quick="smoke test: fine-tune on 6,000 images for 1 epoch, one seed, fewer search "
              "steps (the cached baseline if there, else one trained for 1 epoch on 6,000 "
              "images)")
    p.add_argument("--verbose", type=int, default=0, help="Keras progress (0, 1 or 2)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s", datefmt="%H:%M:%S", stream=sys.stdout)
    for noisy in ("tf2onnx", "surgery.export.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.quick:
        args.finetune_epochs, args.seeds = 1, args.seeds[:1]
        args.search_steps = min(args.search_steps, 4)
        args.train_limit = args.train_limit or 6000
    # surgery's latency tables, measured once per machine: kept with this benchmark, so a
    # table an older surgery wrote in the shared cache (~/.cache/keras-surgery/cost) is not
    # read (one written mid-change there made every latency plan of this ViT cut nothing)
    os.environ.setdefault("SURGERY_COST_CACHE", os.path.join(args.work_dir, "cost-cache"))
    started = time.time()
    stages: Dict[str, float] = {}
    try:
        splits = load_splits("fashion_mnist", batch_size=128, seed=0, val_fraction=0.05)
    except DataError as exc:
        print(f"vit_fashion_mnist.py: error: {exc}", file=sys.stderr)
        return 2
    os.makedirs(args.work_dir, exist_ok=True)
    t = time.time()
    base, base_meta = baseline(splits, args)
    acc_base = evaluate_accuracy(base, splits.test)
    stages["baseline"] = time.time() - t
    logger.info("baseline: %.4f test accuracy, %d parameters, %d FLOPs%s", acc_base,
                base.count_params(), surgery.count_flops(base),
                f", trained in {base_meta['train_seconds'] / 60:.1f} min"
                if "train_seconds" in base_meta else "")
    if args.train_only:
        print(f"baseline {base_meta['path']}: test accuracy {acc_base * 100:.2f} %")
        return 0

    x_calib = as_arrays(splits.train, limit=args.calib)[0]
    x_check = as_arrays(splits.test, limit=8)[0]
    timer = Timer(base, args.runs)
    base_ms = 1e3 * surgery.cost.timing.interleaved({"base": timer.base_run},
                                                    runs=args.runs)["base"]
    logger.info("baseline: %.2f ms a batch of %d (ONNX Runtime, %d threads)", base_ms, BATCH,
                THREADS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cuts-", dir=args.work_dir) as folder:
        for name in args.variants:
            t = time.time()
            p, extra = make_plan(name, base, timer, x_calib, args)
            stages[f"{name}: plan"] = time.time() - t
            if p is None:
                rows.append(dict(extra, variant=name))
                continue
            t = time.time()
            rows.append(run_variant(name, base, p, extra, splits, args, timer, x_check,
                                    folder))
            stages[f"{name}: measure + fine-tune"] = time.time() - t
    minutes = (time.time() - started) / 60
    text = table(acc_base, base_ms, rows, len(args.seeds))
    verdicts = checks(acc_base, rows)
    print(f"\nFashion-MNIST, keras-hub ViT ({baseline_tag(args)}), target {GOAL:.2f} of the "
          f"latency; fine-tuning {args.finetune_epochs} epoch(s) on "
          f"{args.train_limit or splits.sizes['train']} images; {minutes:.1f} min\n")
    print(text)
    print("\nstages: " + "; ".join(f"{k} {v / 60:.1f} min" for k, v in stages.items()))
    print("\n" + "\n".join(verdicts))
    if args.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w") as f:
            f.write(text + "\n\n" + "\n".join(f"- {v}" for v in verdicts) + "\n")
    if args.plot:
        print(f"plot: {plot(acc_base, rows, args.plot)}")
    if args.json:
        write_json(args.json, dict(acc_baseline=acc_base, baseline=base_meta,
                                   baseline_ms=base_ms, minutes=minutes, stages=stages,
                                   checks=verdicts, args=vars(args), rows=rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
