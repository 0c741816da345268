"""Command line of ``train.py`` (``keras-surgery train``): this module owns its argument
parser, the checks of flag values and combinations (:func:`validate`, and
:func:`refuse_keras2_only` for a Keras 3 run), and the small helpers of the run
(:mod:`surgery.cli.train`): the batches of an epoch, the resumable run folder, whether
TensorBoard can write.

Errors a user can fix are :class:`UsageError`: one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
from typing import Callable

from surgery.cli.usage import (  # noqa: F401  (train.UsageError, as before)
    UsageError, add_keras_arguments, add_run_folder_arguments, command_parser)
from surgery.pipeline.resume import RunFolder

PROG = "train.py"
#: the sparsity penalties (``surgery.pipeline.regularizers.add_penalties``' arguments, and
#: flags): what each one penalises
PENALTY_HELP = {
    "l1": "L1 on conv/dense kernels",
    "l2": "L2 on conv/dense kernels",
    "gl_filter": "group lasso over output filters",
    "gl_channel": "group lasso over input channels",
    "gl_all": "group lasso over filters and input channels",
    "bn_l1": "L1 on BatchNormalization gamma (network slimming)",
    "angular_filter": "strength x sum over filter pairs of cos^2",
    "angular_channel": "strength x sum over input-channel pairs of cos^2",
}
PENALTIES = tuple(PENALTY_HELP)



def _m_by_n(text: str):
    try:
        m, n = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected M,N such as 2,4, got {text!r}") from None
    if not 0 < m < n:
        raise argparse.ArgumentTypeError(f"need 0 < M < N, got {text!r}")
    return m, n


def _dashed(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``train.py`` (every flag documented with its default)."""
    p, g = command_parser(PROG, "Train a model of models/ on a data source of "
                          "data_generator.py, optionally with sparsity penalties, tfmot "
                          "pruning or unstructured pruning + fine-tuning; writes an .h5.")
    g.add_argument("--model", default=None,
                   help="model name in models.MODELS (mobilenet_v2, mobilenet_v2_res, "
                        "mobilenet_v2_vgg, lenet5, vgg16, vgg19, resnet18); "
                        "required unless --restore (default: none)")
    g.add_argument("--restore", default=None, metavar="FILE",
                   help="continue training the model in this .h5 (Keras 2) or .keras / "
                        "Keras 3 .h5 (Keras 3 process) instead of building --model (fresh "
                        "optimizer; default: none)")
    add_keras_arguments(g, "--restore", "the model built from --model")
    g.add_argument("--data", default="digits",
                   help="data source: digits, fashion_mnist, mnist, cifar10, cifar100, an npy "
                        "folder or an image folder")
    g.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="resize images to PX x PX (default: the data's own size, or the "
                        "restored model's input size)")
    g.add_argument("--augment", action="store_true",
                   help="random pad-4 crop and horizontal flip on the training split")
    g.add_argument("--seed", type=int, default=0,
                   help="seed for the split, shuffling, initialisation and augmentation")
    add_run_folder_arguments(g, "runs/train-MODEL-TIMESTAMP", "train again")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=10, help="training epochs")
    g.add_argument("--batch-size", type=int, default=32, help="batch size")
    g.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                   help="sgd (momentum 0.9) or adam")
    g.add_argument("--init-lr", type=float, default=None,
                   help="peak learning rate (default: 0.05 for sgd, 0.001 for adam)")
    g.add_argument("--lr-schedule", choices=("cosine", "step", "piecewise"), default="cosine",
                   help="decay after warmup: cosine to 0; step: x--lr-decay every "
                        "--lr-step-epochs; piecewise: x--lr-decay at 50%% and again at 75%% "
                        "of training")
    g.add_argument("--lr-step-epochs", type=int, default=None,
                   help="epochs between decays of the step schedule (default: epochs // 3, "
                        "at least 1)")
    g.add_argument("--lr-decay", type=float, default=0.1,
                   help="factor of the step and piecewise schedules")
    g.add_argument("--warmup-epochs", type=float, default=0.0,
                   help="linear learning-rate warmup length in epochs (0 = none)")

    g = p.add_argument_group("sparsity penalties (0 = off; surgery.pipeline.regularizers)")
    for name, what in PENALTY_HELP.items():
        g.add_argument(_dashed(name), type=float, default=0.0, help=what)

    g = p.add_argument_group("tfmot magnitude pruning during training (surgery.pipeline.sparsity)")
    g.add_argument("--prune-schedule", choices=("constant", "polynomial"), default=None,
                   help="turn tfmot pruning on with this schedule (default: off; "
                        "--m-by-n alone implies constant)")
    g.add_argument("--target-sparsity", type=float, default=None,
                   help="final fraction of zeros in each pruned kernel (default: 0.5)")
    g.add_argument("--begin-step", type=int, default=None,
                   help="first pruning step in batches (default: 0)")
    g.add_argument("--end-step", type=int, default=None,
                   help="last pruning step (default: constant: never stops; polynomial: "
                        "the last training step)")
    g.add_argument("--prune-frequency", type=int, default=None,
                   help="steps between mask updates (default: 100, capped at a tenth of the "
                        "pruning span)")
    g.add_argument("--m-by-n", type=_m_by_n, default=None, metavar="M,N",
                   help="tfmot structured sparsity, e.g. 2,4 (M zeros in each N weights; "
                        "default: off)")

    g = p.add_argument_group("unstructured pruning after training (surgery.pipeline.sparsity)")
    g.add_argument("--unstructured-threshold", type=float, default=None, metavar="T",
                   help="zero kernel weights with |w| < T, then fine-tune (default: off)")
    g.add_argument("--unstructured-ratio", type=float, default=None, metavar="R",
                   help="zero the fraction R of smallest kernel weights, then fine-tune "
                        "(default: off)")
    g.add_argument("--unstructured-scope", choices=("layer", "global"), default=None,
                   help="ratio per layer or over all kernels pooled (default: layer)")
    g.add_argument("--finetune-epochs", type=int, default=None,
                   help="fine-tuning epochs after unstructured pruning, mask kept "
                        "(default: 1)")
    g.add_argument("--finetune-lr", type=float, default=None,
                   help="fine-tuning peak learning rate (default: --init-lr / 10)")
    return p


def _require(args: argparse.Namespace, name: str, holds: Callable[[object], bool],
             rule: str) -> None:
    """Refuse ``--name`` unless it is unset (None) or ``holds`` for its value; ``rule`` says
    what it must be."""
    value = getattr(args, name)
    if value is not None and not holds(value):
        raise UsageError(f"{_dashed(name)} must be {rule}, got {value}")


def _validate_training(args: argparse.Namespace) -> None:
    if (args.model is None) == (args.restore is None):
        raise UsageError("give exactly one of --model NAME or --restore FILE.h5")
    if args.restore is not None and not os.path.isfile(args.restore):
        raise UsageError(f"--restore: no such file {args.restore!r}")
    for name in ("epochs", "batch_size", "image_size", "lr_step_epochs"):
        _require(args, name, lambda v: v >= 1, ">= 1")
    _require(args, "init_lr", lambda v: v > 0, "> 0")
    _require(args, "warmup_epochs", lambda v: 0 <= v <= args.epochs, "in [0, --epochs]")
    _require(args, "lr_decay", lambda v: 0 < v <= 1, "in (0, 1]")
    for name in PENALTIES:
        _require(args, name, lambda v: v >= 0, ">= 0")  # also refuses NaN


def _validate_tfmot(args: argparse.Namespace) -> None:
    tfmot_flags = [f for f in ("target_sparsity", "begin_step", "end_step", "prune_frequency")
                   if getattr(args, f) is not None]
    if tfmot_flags and args.prune_schedule is None and args.m_by_n is None:
        raise UsageError(f"{_dashed(tfmot_flags[0])} needs --prune-schedule (or --m-by-n)")
    _require(args, "target_sparsity", lambda v: 0 <= v < 1, "in [0, 1)")
    _require(args, "begin_step", lambda v: v >= 0, ">= 0")
    _require(args, "prune_frequency", lambda v: v >= 1, ">= 1")
    if args.end_step is not None and args.end_step <= (args.begin_step or 0):
        raise UsageError(f"--end-step ({args.end_step}) must be > --begin-step")


def _validate_unstructured(args: argparse.Namespace) -> None:
    if args.unstructured_threshold is not None and args.unstructured_ratio is not None:
        raise UsageError("give only one of --unstructured-threshold and --unstructured-ratio")
    if args.unstructured_threshold is None and args.unstructured_ratio is None:
        for flag in ("unstructured_scope", "finetune_epochs", "finetune_lr"):
            if getattr(args, flag) is not None:
                raise UsageError(f"{_dashed(flag)} needs --unstructured-threshold or "
                                 "--unstructured-ratio")
    _require(args, "unstructured_threshold", lambda v: v >= 0, ">= 0")
    _require(args, "unstructured_ratio", lambda v: 0 <= v <= 1, "in [0, 1]")
    _require(args, "finetune_epochs", lambda v: v >= 1, ">= 1")
    _require(args, "finetune_lr", lambda v: v > 0, "> 0")


def validate(args: argparse.Namespace) -> None:
    """Check flag values and combinations; raise UsageError with one line."""
    _validate_training(args)
    _validate_tfmot(args)
    _validate_unstructured(args)
    tfmot_on = args.prune_schedule is not None or args.m_by_n is not None
    if tfmot_on and (args.unstructured_threshold is not None
                     or args.unstructured_ratio is not None):
        raise UsageError("tfmot pruning (--prune-schedule/--m-by-n) and unstructured pruning "
                         "(--unstructured-*) cannot be combined in one run")


#: Options that drive tfmot or the tf-keras unstructured pruning: Keras 2 only.
KERAS2_ONLY = ("prune_schedule", "m_by_n", "target_sparsity", "begin_step", "end_step",
               "prune_frequency", "unstructured_threshold", "unstructured_ratio",
               "unstructured_scope", "finetune_epochs", "finetune_lr")


def refuse_keras2_only(args: argparse.Namespace) -> None:
    """In a Keras 3 process, refuse the tfmot / unstructured options with one line."""
    for name in KERAS2_ONLY:
        if getattr(args, name) is not None:
            raise UsageError(f"{_dashed(name)} needs Keras 2 (tf-keras; tfmot has "
                             "no Keras 3 version): run without --keras 3 / use a .h5 written "
                             "by Keras 2")


def tensorboard_available() -> bool:
    """TensorBoard event writing needs the ``tensorboard`` package, which TensorFlow 2.21
    no longer installs with itself; without it the TensorBoard callbacks crash mid-fit."""
    return importlib.util.find_spec("tensorboard") is not None


def steps_per_epoch(dataset) -> int:
    """Batches in one pass of a ``tf.data`` dataset (counted when its cardinality is
    unknown), at least 1."""
    n = int(dataset.cardinality())
    if n < 1:
        n = sum(1 for _ in dataset)
    return max(1, n)


def run_folder(args: argparse.Namespace, out: str, path: str) -> RunFolder:
    """The resumable folder of a training run (:class:`surgery.pipeline.resume.RunFolder`):
    ``path``, the trained model, marks it finished; a finished folder is refused in one line
    unless ``--overwrite``."""
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "overwrite")}
    folder = RunFolder(out, settings, finished=os.path.basename(path),
                       overwrite=getattr(args, "overwrite", False))
    folder.check()
    folder.start()
    return folder
