#!/usr/bin/env python
"""The end-to-end CLI: trained model -> channel plan -> surgery -> fine-tune -> artifacts.

This module owns the command line of the pipeline a user runs from the shell (the stages
live in :mod:`surgery.cli._run`, planning in :mod:`surgery.cli._planning`, what differs
between Keras 2 and Keras 3 in :mod:`surgery.cli._kit`): load a trained ``.keras`` or
``.h5`` with the Keras that wrote it (or train a baseline first, with tf-keras or, given
``--keras 3``, with Keras 3 on the ``KERAS_BACKEND`` backend), measure it, plan which channels to delete (by ``--ratio`` or by a FLOPs
target ``--flops-target``, planned by ``surgery.plan(flops_target=...)``), cut them with
:func:`surgery.apply`, fine-tune with LR warmup + cosine decay (optionally distilling from
the original, optionally under a ``tf.distribute`` strategy, optionally in ``--iterative``
rounds or ``--layerwise`` one group at a time), measure again, and write ``pruned.h5``
(``pruned.keras`` on Keras 3), ``baseline.h5``/``.keras`` (when trained here), ``plan.json``, ``report.json`` and ``report.md`` into
the output folder, then print the report table. Errors the user can cause (missing or
corrupt ``.h5``, unknown model or data set, unreachable target) print one line to stderr
and exit with status 2, leaving no output files.

Example::

    python prune_and_finetune.py                       # the embedded MobileNetV2/digits demo
    python prune_and_finetune.py --model-path base.h5 --data digits --flops-target 0.6 \\
        --distill --finetune-epochs 10 --out runs/demo
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

# Started as a program (keras-surgery, python -m surgery.cli.*, or the checkout shims),
# TensorFlow (Keras 2 runs) or Keras 3 (Keras 3 model files, --keras 3) was imported
# quietly and with the oneDNN guard: see surgery/_startup.py.

import surgery  # noqa: E402,F401  (selects the Keras 2 API unless Keras 3 came first)
from surgery._startup import quiet_tensorflow_logging  # noqa: E402
from surgery.cli._kit import UsageError  # noqa: E402
from surgery.cli.usage import (  # noqa: E402
    add_keras_arguments, add_run_folder_arguments, command_parser)
from surgery.cli._planning import plan_flops_target  # noqa: E402,F401
from surgery.cli._run import RunResult, VERIFY_TOLERANCE, run  # noqa: E402,F401
from surgery.cli.language_run import (  # noqa: E402
    add_language_arguments, describe_files, render as render_language, run_language_model,
    wants_text)
from surgery.data import DataError  # noqa: E402
from surgery.pipeline.finetune import STRATEGIES  # noqa: E402
from surgery.pipeline.report import render_markdown  # noqa: E402
from surgery.pruning import criteria as _criteria  # noqa: E402

logger = logging.getLogger("prune_and_finetune")

PROG = "prune_and_finetune"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; ``--help`` documents every flag and its default.

    Example:
        >>> build_parser().parse_args([]).flops_target
        0.5
    """
    p, g = command_parser(PROG, "Prune whole channels from a Keras CNN, fine-tune it, and "
                          "report parameters, FLOPs, .h5 size and accuracy before/after.")
    g.add_argument("--model-path", default=None,
                   help="trained model to prune: a .keras file or an .h5 written by Keras 2 "
                        "or 3, loaded by the Keras that wrote it; when omitted, a --model "
                        "baseline is trained first for --baseline-epochs")
    add_keras_arguments(g, "--model-path", "the baseline trained when no --model-path is given")
    g.add_argument("--model", default="mobilenet_v2",
                   help="architecture for the baseline (models.MODELS name)")
    g.add_argument("--alpha", type=float, default=0.35,
                   help="width multiplier of the baseline (models that take alpha)")
    g.add_argument("--data", default="digits",
                   help="data source: digits, fashion_mnist (apt-get install "
                        "dataset-fashion-mnist), mnist, cifar10, cifar100, or a folder")
    g.add_argument("--image-size", type=int, default=32,
                   help="square input size for a new baseline (a loaded model's input "
                        "size wins)")
    g.add_argument("--channels", type=int, default=1, choices=(1, 3),
                   help="input channels for a new baseline (a loaded model's wins)")
    g.add_argument("--batch-size", type=int, default=32, help="batch size")
    g.add_argument("--baseline-epochs", type=int, default=40,
                   help="epochs to train the baseline when no --model-path is given")
    g.add_argument("--baseline-lr", type=float, default=3e-3,
                   help="peak learning rate of baseline training")
    g.add_argument("--bn-momentum", type=float, default=0.9,
                   help="BatchNormalization momentum while training (short runs need "
                        "~0.9; 0 or less keeps the model's own)")
    g = p.add_argument_group("pruning")
    g.add_argument("--criterion", default="l1",
                   help="channel importance: " + ", ".join(sorted(_criteria.CRITERIA)))
    g.add_argument("--policy", default="aggregate",
                   choices=("aggregate", "intersection", "deepest", "depthwise"),
                   help="how members of a channel group agree")
    g.add_argument("--ratio", type=float, default=None,
                   help="fraction of channels to delete (instead of --flops-target)")
    g.add_argument("--flops-target", type=float, default=0.5,
                   help="fraction of FLOPs to remove: at least this, and within 2 points "
                        "where the model's channels allow (ignored when --ratio is given)")
    g.add_argument("--latency-target", type=float, default=None,
                   help="fraction of measured latency to remove in --runtime (instead of "
                        "--flops-target), e.g. 0.5 for twice as fast")
    g.add_argument("--params-target", type=float, default=None,
                   help="fraction of parameters to remove (instead of --flops-target): "
                        "channels, attention heads and block widths ranked together by "
                        "importance")
    g.add_argument("--depth", action="store_true",
                   help="also remove whole transformer blocks (keras-hub ViT and DeiT "
                        "encoders, pre-norm LM decoders), costed with the heads and widths")
    g.add_argument("--head-dims", action="store_true",
                   help="attention layers (MultiHeadAttention) also lose per-head query/key "
                        "and value widths, costed with the head count")
    g.add_argument("--query-groups", action="store_true",
                   help="grouped-query attention loses whole key/value groups (with their "
                        "query heads) instead of query heads from every group")
    g.add_argument("--compensate", action="store_true",
                   help="fold each removed MLP unit's or channel's mean output on training "
                        "images into the next bias, where exact to state (FLAP)")
    g.add_argument("--runtime", default="onnxruntime",
                   choices=("onnxruntime", "tflite", "tensorflow"),
                   help="runtime --latency-target is measured in")
    g.add_argument("--latency-batch-size", type=int, default=1,
                   help="batch size --latency-target is measured at (the deployed one)")
    g.add_argument("--threads", type=int, default=None,
                   help="threads --latency-target is measured with (default: all cores)")
    g.add_argument("--max-ratio", type=float, default=0.9,
                   help="largest uniform channel ratio the --flops-target search may use")
    g.add_argument("--scope", default="global", choices=("local", "global"),
                   help="rank channels within each group (local) or across groups (global)")
    g.add_argument("--round-to", type=int, default=1,
                   help="kept widths are multiples of this (with --latency-target, the "
                        "default 1 lets the plan measure the runtime's best alignment)")
    g.add_argument("--min-channels", type=int, default=2, help="never keep fewer channels")
    g.add_argument("--recalibrate-batches", type=int, default=30, metavar="N",
                   help="adaptive BN: after every cut, re-estimate the BatchNormalization "
                        "statistics on N training batches before measuring and fine-tuning "
                        "(surgery.recalibrate_batchnorm); 0 turns it off")
    g.add_argument("--candidates", type=int, default=8, metavar="N",
                   help="with --flops-target, --params-target or --latency-target: search "
                        "N allocations of the budget between layers and kinds of unit, cut "
                        "each, recalibrate its BatchNormalization statistics on training "
                        "batches and keep the one closest to the original's predictions "
                        "(EagleEye; a language model's: the least KL divergence of its "
                        "next-token distributions); 1 turns it off")
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--finetune-epochs", type=int, default=30, help="fine-tuning epochs")
    g.add_argument("--warmup-epochs", type=float, default=1.0,
                   help="linear LR warmup epochs before cosine decay")
    g.add_argument("--lr", type=float, default=3e-3, help="peak fine-tuning learning rate")
    g.add_argument("--distill", action="store_true",
                   help="distil from the unpruned model (Hinton soft targets)")
    g.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    g.add_argument("--alpha-kd", "--kd-alpha", dest="kd_alpha", type=float, default=0.5,
                   help="weight of the soft-target loss (1 - it weighs the hard labels)")
    g.add_argument("--iterative", type=int, default=1, metavar="K",
                   help="reach the target in K prune/fine-tune rounds")
    g.add_argument("--layerwise", action="store_true",
                   help="ThiNet-style: prune one channel group at a time, fine-tune briefly "
                        "(--layerwise-steps batches), move on; then fine-tune")
    g.add_argument("--layerwise-steps", type=int, default=10,
                   help="batches of brief fine-tuning after each group in --layerwise")
    g = p.add_argument_group("run")
    g.add_argument("--strategy", default="default", choices=STRATEGIES + ("dataparallel",),
                   help="more than one device: Keras 2 through tf.distribute (mirrored, "
                        "multiworker, tpu); Keras 3 mirrored on TensorFlow "
                        "(tf.distribute.MirroredStrategy), dataparallel on JAX "
                        "(keras.distribution.DataParallel); none on PyTorch")
    g.add_argument("--seed", type=int, default=0, help="random seed (data split, init, order)")
    add_run_folder_arguments(g, "runs/<timestamp>", "start again")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="write channels.png, sensitivity.png and accuracy_vs_flops.png "
                        "(sensitivity per group on the validation split)")
    g.add_argument("--tflite", action="store_true",
                   help="also export baseline/pruned .tflite (float32, dynamic int8, full "
                        "int8 calibrated on the training split) with accuracy and sizes")
    add_language_arguments(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv``, run the pipeline, print the report table; returns the exit status
    (0 ok, 2 for errors the user can fix, which print one line to stderr).

    Example::

        status = main(["--model", "lenet5", "--baseline-epochs", "1",
                       "--finetune-epochs", "1", "--out", "runs/tiny"])
    """
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    # the checkpoint writer behind BackupAndRestore logs absl's "Sharding callback
    # duration" at INFO after every epoch: 4 KB of a default run's log
    logging.getLogger("absl").setLevel(logging.WARNING)
    if args.quiet:  # TensorFlow's own warnings (retracing, ...) too
        quiet_tensorflow_logging()
    try:
        if wants_text(args):  # a keras-hub causal LM on text: Minitron's recipe
            report = run_language_model(args)
            print(render_language(report), end="")
            print(describe_files(report))
            return 0
        result = run(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (surgery.SurgeryError, DataError) as exc:  # library and data errors: one line
        print(f"{PROG}: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    if not result.chief:  # a multi-worker run: the chief prints the report
        print(f"{result.worker}: fine-tuning done in step with the chief, which writes the "
              f"report and artifacts in {result.out}; this worker wrote nothing there")
        return 0
    print(render_markdown(result.report), end="")
    print(f"artifacts in {result.out}: {', '.join(result.files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
