"""Accuracy against FLOPs on real data: channel-pruning criteria, distillation, and tfmot.

On ``digits`` (the 8x8 handwritten digits shipped with scikit-learn, upsampled to 32x32
for MobileNetV2 and kept at 8x8 for the CIFAR-style ResNet-18, split per seed into
train/val/test), for each model and seed this script trains a baseline, then for each
FLOPs reduction (``--targets``, 50 % by default) and each criterion (``l1``,
``bn_gamma``, ``thinet``, ``taylor``) plans a uniform per-group ratio with
``surgery.plan(scope="local")`` (so every criterion removes exactly the same FLOPs;
residual streams are left whole, see :func:`coupled_layers`), cuts the channels and
fine-tunes for the same budget with and without distilling from the baseline (see
``_masked_finetune.py`` for how one traced training step serves every cut). Beside them,
tfmot's ``prune_low_magnitude`` (polynomial schedule over the same budget) is trained
from the same baseline to the same number of non-zero parameters as the channel-pruned
model; its FLOPs do not change. Printed: one markdown table per model with test accuracy
mean ± std over the seeds; ``--json`` keeps every run and ``--plot`` draws accuracy
against the FLOPs removed.

Run (935 s measured on a 2-core CPU with nothing else running; each extra target adds
about 70 % as much again, the baselines being shared)::

    python bench/accuracy.py --json bench/results/accuracy.json --plot bench/results/accuracy.png
    python bench/accuracy.py --models resnet18 --seeds 0 --targets 0.3 0.5 0.7
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

logger = logging.getLogger("bench.accuracy")

CRITERIA = ("l1", "bn_gamma", "thinet", "taylor")
MODELS = {  # name: (models.MODELS key, keyword arguments, input side, label)
    "mobilenet_v2": ("mobilenet_v2", {"alpha": 0.35}, 32, "MobileNetV2 (α 0.35, 32×32)"),
    "resnet18": ("resnet18", {"width": 0.25}, 8, "ResNet-18 (width 0.25, 8×8)"),
}
TFMOT = "tfmot (same params)"


@dataclasses.dataclass(frozen=True)
class Budget:
    """Training settings shared by every run, so the comparison is at equal cost."""

    baseline_epochs: int = 40
    finetune_epochs: int = 8
    lr: float = 3e-3
    batch_size: int = 64
    bn_momentum: float = 0.9
    criterion_examples: int = 256


# ----------------------------------------------------------------------------- one job

def _splits(model_key: str, seed: int, batch_size: int):
    import data_generator as dg

    side = MODELS[model_key][2]
    return dg.load_splits("digits", image_size=(side, side), channels=1,
                          batch_size=batch_size, seed=seed)


def _build(model_key: str, splits):
    import models

    name, kwargs, _, _ = MODELS[model_key]
    return models.get_model(name, input_shape=splits.input_shape, classes=splits.num_classes,
                            **kwargs)


def _copy(model):
    from surgery import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _cached(criterion: str, data):
    """``criterion`` scoring each layer once per model, whatever the ratio asked later."""
    from surgery.pruning import criteria

    cache: Dict[str, object] = {}

    def scores(model, names, _data=None, **options):
        missing = [n for n in names if n not in cache]
        if missing:
            cache.update(criteria.channel_scores(model, missing, criterion, data, **options))
        return {n: cache[n] for n in names}
    scores.__name__ = criterion
    return scores


def coupled_layers(model) -> List[str]:
    """Producers of channel groups that more than one layer writes (residual streams):
    left whole, so pruning thins the blocks' inner layers, as ResNet and MobileNetV2
    pruning usually does (the residual width is shared by every block it passes)."""
    import surgery

    return sorted({n for g in surgery.channel_groups(model) if len(g.producers) > 1
                   for n in g.producers})


def _accuracy(model, x, y) -> float:
    """Top-1 accuracy from one eager call (no graph to build for each cut model)."""
    import numpy as np

    return float(np.mean(np.argmax(model(x, training=False).numpy(), -1) == np.argmax(y, -1)))


def run_job(model_key: str, seed: int, ratios: Dict[float, float], criteria_names: List[str],
            budget: Budget, threads: int = 0) -> List[dict]:
    """Baseline, then every (target, criterion, distill) and tfmot run for one model and
    seed; returns one row per run."""
    import surgery
    from surgery import keras, tf
    from surgery.pipeline import sparsity
    from surgery.pipeline.finetune import finetune, set_bn_momentum
    import data_generator as dg
    from _common import nonzero_params, tfmot_sparsity_for
    from _masked_finetune import MaskedFinetuner

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    label = f"[{model_key} seed {seed}]"
    splits = _splits(model_key, seed, budget.batch_size)
    x_test, y_test = dg.as_arrays(splits.test)
    keras.utils.set_random_seed(seed)
    base = _build(model_key, splits)
    set_bn_momentum(base, budget.bn_momentum)
    start = time.perf_counter()
    finetune(base, splits.train, epochs=budget.baseline_epochs, lr=budget.lr, verbose=0)
    flops0, params0 = surgery.count_flops(base), base.count_params()
    rows = [dict(model=model_key, seed=seed, target=0.0, method="baseline",
                 acc=_accuracy(base, x_test, y_test), flops=flops0, params=params0,
                 nonzero=params0, seconds=time.perf_counter() - start)]
    logger.info("%s baseline %.2f%% (%.0f s)", label, 100 * rows[0]["acc"], rows[0]["seconds"])

    def record(method, target, model, seconds, **extra):
        row = dict(model=model_key, seed=seed, target=target, method=method,
                   acc=_accuracy(model, x_test, y_test), params=model.count_params(),
                   nonzero=nonzero_params(model), seconds=seconds, **extra)
        row.setdefault("flops", surgery.count_flops(model))
        rows.append(row)
        logger.info("%s -%d%% FLOPs %-18s %.2f%% (%.0f s)", label, round(100 * target),
                    method, 100 * row["acc"], seconds)

    teacher = _copy(base)  # Distiller freezes its teacher; base must stay as it is
    tuner = MaskedFinetuner(base, splits.train, epochs=budget.finetune_epochs, lr=budget.lr,
                            teacher=teacher, bn_momentum=budget.bn_momentum)
    data = dg.as_arrays(splits.train, limit=budget.criterion_examples)
    ignore = coupled_layers(base)
    cut_params = {}
    for criterion in criteria_names:
        scores = _cached(criterion, data)
        for target, ratio in ratios.items():
            start = time.perf_counter()
            plan = surgery.plan(base, ratio=ratio, criterion=scores, scope="local",
                                min_channels=2, data=data, ignore=ignore)
            acc_cut = _accuracy(surgery.zero_channels(base, plan.deletions), x_test, y_test)
            for distill in (False, True):
                pruned, gap = tuner.run(plan, distill=distill, seed=seed, x_check=x_test)
                cut_params[target] = pruned.count_params()
                record(criterion + (" + distill" if distill else ""), target, pruned,
                       time.perf_counter() - start, acc_cut=acc_cut, equivalence_gap=gap)
                start = time.perf_counter()

    for target in [t for t in ratios if t in cut_params]:
        start = time.perf_counter()
        steps = budget.finetune_epochs * (-(-splits.sizes["train"] // budget.batch_size))
        keras.utils.set_random_seed(seed)
        wrapped = sparsity.prune_low_magnitude_model(
            base, "polynomial", target_sparsity=tfmot_sparsity_for(base, cut_params[target]),
            begin_step=0, end_step=max(2, int(0.6 * steps)), frequency=10)
        finetune(wrapped, splits.train, epochs=budget.finetune_epochs, lr=budget.lr,
                 verbose=0, callbacks=sparsity.pruning_callbacks())
        record(TFMOT, target, sparsity.strip(wrapped), time.perf_counter() - start,
               flops=flops0)
    return rows


# ----------------------------------------------------------------------------- the grid

def uniform_ratios(model_key: str, targets: List[float], budget: Budget) -> Dict[float, float]:
    """The per-group ratio whose cut is nearest each target fraction of FLOPs
    (``surgery.plan(flops_target=)``'s ``settings["ratio"]``; architecture only: a local
    uniform ratio cuts the same channel counts whatever the criterion)."""
    import surgery

    model = _build(model_key, _splits(model_key, 0, budget.batch_size))
    return {t: surgery.plan(model, flops_target=t, scope="local", criterion="l1",
                            min_channels=2, ignore=coupled_layers(model)).settings["ratio"]
            for t in targets}


def summarise(rows: List[dict], targets: List[float]) -> str:
    """One markdown table per model: accuracy mean ± std (percent) over seeds."""
    out = []
    for model_key in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model_key]
        base = [r for r in mine if r["method"] == "baseline"]
        seeds = len(base)
        out.append(f"**{MODELS[model_key][3]}**, {seeds} seed(s); baseline "
                   f"{_mean_std([r['acc'] for r in base])} % "
                   f"({base[0]['params'] / 1e3:.0f}k params, {base[0]['flops'] / 1e6:.1f} "
                   "MFLOPs)\n")
        cols = [t for t in targets if any(r["target"] == t for r in mine)]
        heads = []
        for t in cols:
            cut = next(r for r in mine if r["target"] == t and r["method"] != TFMOT)
            heads.append(f"−{round(100 * t)} % target: {cut['flops'] / base[0]['flops']:.2f}× "
                         f"FLOPs, {cut['params'] / base[0]['params']:.2f}× params")
        out.append("| method | " + " | ".join(heads) + " |")
        out.append("|---" * (len(cols) + 1) + "|")
        for method in dict.fromkeys(r["method"] for r in mine if r["method"] != "baseline"):
            cells = []
            for t in cols:
                accs = [r["acc"] for r in mine if r["method"] == method and r["target"] == t]
                cells.append(_mean_std(accs) if accs else "")
            out.append(f"| {method} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _mean_std(values: List[float]) -> str:
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def plot(rows: List[dict], path: str) -> str:
    """Accuracy (mean, error bar = std over seeds) against the FLOPs target, per model."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from surgery.pipeline.plots import save_png

    model_keys = list(dict.fromkeys(r["model"] for r in rows))
    figure = Figure(figsize=(5.5 * len(model_keys), 4.2), dpi=100)
    FigureCanvasAgg(figure)
    for i, model_key in enumerate(model_keys, 1):
        ax = figure.add_subplot(1, len(model_keys), i)
        mine = [r for r in rows if r["model"] == model_key]
        base = np.mean([r["acc"] for r in mine if r["method"] == "baseline"])
        ax.axhline(100 * base, color="grey", linestyle="--", label="baseline")
        for method in dict.fromkeys(r["method"] for r in mine if r["method"] != "baseline"):
            ts = sorted({r["target"] for r in mine if r["method"] == method})
            accs = [[100 * r["acc"] for r in mine if r["method"] == method and r["target"] == t]
                    for t in ts]
            ax.errorbar([100 * t for t in ts], [np.mean(a) for a in accs],
                        yerr=[np.std(a) for a in accs], marker="o", capsize=3, label=method,
                        linestyle=":" if method.startswith("tfmot") else "-")
        ax.set_title(MODELS[model_key][3])
        ax.set_xlabel("FLOPs removed by channel pruning (%) / same params for tfmot")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_png(ax, path)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--targets", nargs="+", type=float, default=[0.5],
                        help="fractions of FLOPs to remove (each adds about 70 %% of the "
                             "default run's time)")
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=CRITERIA)
    for field in dataclasses.fields(Budget):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default),
                            default=field.default)
    parser.add_argument("--workers", type=int, default=2,
                        help="processes running (model, seed) jobs side by side, each "
                             "with its share of the CPU threads")
    parser.add_argument("--json", default=None, help="write every run's row here")
    parser.add_argument("--plot", default=None, help="write an accuracy-vs-FLOPs PNG here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    from quiet_tf import import_tensorflow_quietly
    import_tensorflow_quietly()
    from tqdm import tqdm

    budget = Budget(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Budget)})
    start = time.perf_counter()
    ratios = {m: uniform_ratios(m, args.targets, budget) for m in args.models}
    logger.info("uniform ratios: %s", ratios)
    jobs = [(m, s) for s in args.seeds for m in args.models]
    threads = max(1, (os.cpu_count() or 1) // args.workers) if args.workers > 1 else 0
    rows: List[dict] = []
    with tqdm(total=len(jobs), desc="jobs (model, seed)") as bar:
        if args.workers > 1:
            import multiprocessing

            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(args.workers, mp_context=context,
                                     initializer=_worker_init) as pool:
                futures = [pool.submit(run_job, m, s, ratios[m], args.criteria, budget,
                                       threads) for m, s in jobs]
                for future in as_completed(futures):
                    rows += future.result()
                    bar.update()
        else:
            for m, s in jobs:
                rows += run_job(m, s, ratios[m], args.criteria, budget)
                bar.update()
    rows.sort(key=lambda r: (list(MODELS).index(r["model"]), r["seed"]))
    print()
    print(summarise(rows, args.targets))
    print(f"budget: {dataclasses.asdict(budget)}; {time.perf_counter() - start:.0f} s")
    if args.json:
        from surgery.atomic import write_atomically

        text = json.dumps(dict(budget=dataclasses.asdict(budget), ratios=ratios, rows=rows),
                          indent=1, default=float)
        write_atomically(args.json, lambda tmp: open(tmp, "w").write(text))
    if args.plot:
        plot(rows, args.plot)
    return 0


def _worker_init() -> None:
    """Each worker: quiet TensorFlow start-up and the same log format."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    from quiet_tf import import_tensorflow_quietly
    import_tensorflow_quietly()


if __name__ == "__main__":
    sys.exit(main())
