"""How long comparing candidate allocations takes: on one zeroed stand-in, or cut one by one.

For the Keras 3 default of ``prune_and_finetune.py`` (MobileNetV2 alpha=0.35 at 32x32x1,
10 classes, ``digits``, ``--flops-target 0.5``, 8 candidates; the model is untrained unless
``--model-path`` names a saved one), it times, in one process: the 8 candidate plans
(``surgery.plan``'s FLOPs search), then for each candidate the stages of scoring it on the
stand-in (zero, adaptive BN, outputs; :mod:`surgery.calibration.stand_in`) and, for the
first ``--cut`` candidates, the old way (cut, adaptive BN, outputs of the cut model). It
prints one line per stage and candidate, and each candidate's score both ways.

Keras 3 is imported before ``surgery`` on the backend ``--backend`` or ``KERAS_BACKEND``
names (default tensorflow).

Run: python bench/candidates_speed.py [--backend jax] [--cut 2] [--model-path baseline.keras]
Results: bench/results/candidates_speed.md (with the CLI's planning times before and after).
"""
from __future__ import annotations

import os
import sys

os.environ.pop("TF_USE_LEGACY_KERAS", None)
for _i, _arg in enumerate(sys.argv):  # the backend must be set before Keras is imported
    if _arg == "--backend" and _i + 1 < len(sys.argv):
        os.environ["KERAS_BACKEND"] = sys.argv[_i + 1]
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402  (Keras 3 first)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import argparse  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402

import surgery  # noqa: E402
from surgery import data as dg  # noqa: E402
from surgery.calibration import candidates as selection  # noqa: E402
from surgery.calibration.batchnorm import recalibrate_batchnorm  # noqa: E402
from surgery.engine.compiled import compiled_call  # noqa: E402
from surgery.calibration.stand_in import StandIn, model_outputs  # noqa: E402
from surgery.engine.graph import resolve  # noqa: E402
from surgery.models import mobilenet_v2  # noqa: E402
from surgery.pruning.execution import cut_graph  # noqa: E402
from surgery.pruning.samples import first_inputs  # noqa: E402

logger = logging.getLogger("bench.candidates_speed")


def _plans(model, data, candidates: int) -> list:
    """The candidate plans ``surgery.plan(flops_target=0.5, candidates=N)`` compares."""
    seen = []
    real = selection.choose_candidate

    def keep(graph, plans, data, **options):
        seen.extend(plans)
        return plans[0]

    selection.choose_candidate = keep
    try:
        surgery.plan(model, flops_target=0.5, scope="global", min_channels=2,
                     candidates=candidates, data=data)
    finally:
        selection.choose_candidate = real
    return seen


def _timed(label: str, k: int, work):
    start = time.perf_counter()
    result = work()
    logger.info("%-26s candidate %d: %6.2f s", label, k, time.perf_counter() - start)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=None, help="Keras 3 backend (read before import)")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--cut", type=int, default=2, help="candidates also scored the old way")
    parser.add_argument("--model-path", default=None, help="a saved Keras 3 model to use")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("surgery").setLevel(logging.WARNING)
    keras.utils.set_random_seed(0)
    model = (keras.models.load_model(args.model_path, compile=False) if args.model_path else
             mobilenet_v2(input_shape=(32, 32, 1), classes=10, alpha=0.35,
                          keras_module=keras))
    splits = dg.load_splits("digits", image_size=(32, 32), channels=1, batch_size=32)
    data = dg.as_arrays(splits.train, limit=960)
    start = time.perf_counter()
    plans = _plans(model, data, args.candidates)
    logger.info("backend %s: %d candidate plans in %.2f s", keras.backend.backend(),
                len(plans), time.perf_counter() - start)
    graph = resolve(model)
    x = first_inputs(data, selection.DEFAULT_EXAMPLES)
    stand_in = _timed("stand-in copy", 0, lambda: StandIn(graph))
    reference = _timed("reference outputs", 0, lambda: stand_in.outputs(x))
    for k, plan in enumerate(plans):
        with contextlib.ExitStack() as stack:
            _timed("zero", k, lambda: stack.enter_context(stand_in.zeroed(plan)))
            _timed("adaptive BN (stand-in)", k, lambda: stand_in.recalibrate(data))
            outputs = _timed("outputs (stand-in)", k, lambda: stand_in.outputs(x))
        score = selection.agreement(reference, outputs)
        if k < args.cut:  # as choose_candidate does for a plan the stand-in cannot imitate
            cut = _timed("cut", k, lambda: cut_graph(graph, plan))
            _timed("adaptive BN (cut)", k, lambda: recalibrate_batchnorm(cut, data))
            call = compiled_call(graph.with_model(cut), training=False)
            old = selection.agreement(reference, _timed("outputs (cut)", k,
                                                        lambda: model_outputs(call, x)))
            logger.info("candidate %d: score %.6f on the stand-in, %.6f cut", k, score, old)
        else:
            logger.info("candidate %d: score %.6f on the stand-in", k, score)

if __name__ == "__main__":
    main()
