"""The language-model path of ``keras-surgery prune``: this module owns Minitron's recipe as
one command (score, cut, distil, quantize) for a keras-hub causal LM saved as ``.keras``.

``prune`` takes it when ``--data`` names text (``python_docs`` or a folder of text files,
:mod:`surgery.text_data`): the text is tokenized by the model's own tokenizer (its
preprocessor's), or by the SentencePiece vocabulary :func:`surgery.text_data.load_text`
trains on the train split (deterministic and cached, so a model trained on it reads the
same ids). Then: measure the model (parameters, FLOPs, test perplexity, tokens/s), plan
under ``--params-target`` / ``--flops-target`` / ``--ratio`` with ``--criterion`` on
calibration sequences of the train split, cut, ``verify``, measure, ``--distill`` for
``--distill-steps`` from the original (resuming from ``OUT/.distill-backup`` after a
kill), ``--quantize int8|int4``, measure at each stage, and write ``pruned.keras``,
``plan.json``, ``report.json`` and ``report.md`` into ``--out`` (atomically).

Example::

    keras-surgery prune --model-path lm.keras --data python_docs --params-target 0.5 \\
        --criterion activation --distill --distill-steps 500 --quantize int8 --out runs/lm
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import time
from itertools import islice
from typing import Optional

import surgery
from surgery.atomic import write_atomically
from surgery.cli._kit import UsageError
from surgery.cli._rounds import VERIFY_TOLERANCE
from surgery.cli._run import timestamp_folder
from surgery.engine.hub_models import is_task
from surgery.export.saving import save_model_atomic
from surgery.pipeline.language import distill, perplexity, tokens_per_second
from surgery.text_data import load_text

logger = logging.getLogger(__name__)

QUANTIZE_MODES = ("int8", "int4")
FILES = ("pruned.keras", "plan.json", "report.json", "report.md")


def add_language_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the language-model path (the rest it shares with ``prune``)."""
    g = parser.add_argument_group("language models (--data python_docs or a text folder)")
    g.add_argument("--distill-steps", type=int, default=200, metavar="N",
                   help="batches of distillation from the original with --distill")
    g.add_argument("--distill-lr", type=float, default=3e-4,
                   help="peak distillation learning rate (AdamW, warmup + cosine)")
    g.add_argument("--quantize", default=None, choices=QUANTIZE_MODES,
                   help="quantize the cut (and distilled) model last: model.quantize(MODE)")
    g.add_argument("--sequence-length", type=int, default=128,
                   help="tokens per packed sequence")
    g.add_argument("--calibration-sequences", type=int, default=64, metavar="N",
                   help="training sequences the activation criterion reads")
    g.add_argument("--eval-batches", type=int, default=20, metavar="N",
                   help="test batches each perplexity is measured on")
    g.add_argument("--text-cache", default=None,
                   help="where the tokenizer and token streams are cached (default: "
                        "$SURGERY_TEXT_CACHE or ~/.cache/keras-surgery/text)")


def wants_text(args: argparse.Namespace) -> bool:
    """Whether ``--data`` names text: ``python_docs``, or a folder holding text files."""
    data = str(args.data)
    if data == "python_docs":
        return True
    if not os.path.isdir(data):
        return False
    return any(name.endswith((".txt", ".rst", ".md")) for _, _, names in os.walk(data)
               for name in names)


def _load(args: argparse.Namespace):
    import keras  # Keras 3: the process chose it for a Keras 3 model file

    if args.model_path is None or not os.path.isfile(args.model_path):
        raise UsageError(f"--data {args.data} is text: pass --model-path, a keras-hub causal "
                         "LM saved as .keras")
    model = keras.saving.load_model(args.model_path)
    if not (is_task(model) and hasattr(model, "generate")):
        raise UsageError(f"--data {args.data} is text, but {args.model_path} holds a "
                         f"{type(model).__name__}, not a keras-hub causal LM "
                         "(Llama3CausalLM, ...): pass one, or image data")
    return model


def _text(args: argparse.Namespace, model):
    preprocessor = getattr(model, "preprocessor", None)
    tokenizer = getattr(preprocessor, "tokenizer", None)
    return load_text(args.data, tokenizer=tokenizer,
                     vocabulary_size=int(model.backbone.vocabulary_size),
                     sequence_length=args.sequence_length,
                     cache_dir=args.text_cache,
                     progress=not args.quiet)


def _measure(model, text, args, stage: str, flops: Optional[int] = None) -> dict:
    """Parameters, FLOPs (``flops`` where given: a quantized model's are its float
    model's, which :func:`surgery.count_flops` does not see through), test perplexity and
    tokens/s of ``model`` at ``stage``."""
    started = time.perf_counter()
    test = list(islice(text.batches("test", args.batch_size, targets=True), args.eval_batches))
    row = {"stage": stage, "params": int(model.count_params()),
           "perplexity": perplexity(model, test)}
    row["flops"] = int(surgery.count_flops(model)) if flops is None else flops
    row["tokens_per_second"] = tokens_per_second(model, test[0][0])
    logger.info("%s: %d parameters, perplexity %.2f, prefill %.0f tok/s, decode %.1f tok/s "
                "(%.0f s)", stage, row["params"], row["perplexity"],
                row["tokens_per_second"]["prefill"], row["tokens_per_second"]["decode"],
                time.perf_counter() - started)
    return row


def _plan(model, text, args):
    calibration = next(text.batches("train", args.calibration_sequences))
    kwargs = dict(criterion=args.criterion, data=calibration, query_groups=args.query_groups,
                  depth=args.depth)
    if args.ratio is None:  # a budget: Minitron's candidate architectures, least divergent
        kwargs["candidates"] = args.candidates
    if args.params_target is not None:
        return surgery.plan(model, params_target=args.params_target, **kwargs)
    if args.ratio is not None:
        return surgery.plan(model, ratio=args.ratio, **kwargs)
    return surgery.plan(model, flops_target=args.flops_target, **kwargs)


def _save(model, path: str, original: str) -> int:
    save_model_atomic(model, path, forbid=original)
    return os.path.getsize(path)


def run_language_model(args: argparse.Namespace) -> dict:
    """The recipe on ``args`` (see the module docstring); returns the report."""
    started, out = time.perf_counter(), args.out or timestamp_folder()
    if os.path.exists(os.path.join(out, "report.json")) and not args.overwrite:
        raise UsageError(f"--out {out} holds a finished run; pass --overwrite to run again")
    model = _load(args)
    text = _text(args, model)
    stages = [_measure(model, text, args, "original")]
    plan = _plan(model, text, args)
    small = surgery.apply(model, plan)
    check = next(text.batches("validation", args.batch_size))
    difference = float(surgery.verify(model, small, plan, check))
    if difference > VERIFY_TOLERANCE:  # as the image pipeline says it
        logger.warning("surgery.verify: the cut model differs from the zeroed original by "
                       "%.2e (> %g): the cut is not exact; please report the model",
                       difference, VERIFY_TOLERANCE)
    stages.append(_measure(small, text, args, "cut"))
    history = None
    if args.distill:
        history = distill(small, model, text.dataset("train", args.batch_size).repeat(),
                          steps=args.distill_steps, temperature=args.temperature,
                          alpha=args.kd_alpha, learning_rate=args.distill_lr,
                          checkpoint_dir=os.path.join(out, ".distill-backup"),
                          checkpoint_every=_every(args.distill_steps))
        stages.append(_measure(small, text, args, "distilled"))
    os.makedirs(out, exist_ok=True)
    sizes = {"original": os.path.getsize(args.model_path),
             "pruned": _save(small, os.path.join(out, "pruned.keras"), args.model_path)}
    if args.quantize:
        small.quantize(args.quantize)
        stages.append(_measure(small, text, args, args.quantize, stages[-1]["flops"]))
        sizes[args.quantize] = _save(small, os.path.join(out, f"pruned_{args.quantize}.keras"),
                                     args.model_path)
    report = {"model": args.model_path, "data": args.data, "out": out, "plan": plan.summary(),
              "verify": difference, "stages": stages, "file_bytes": sizes,
              "documents": text.documents, "distillation": history,
              "seconds": time.perf_counter() - started}
    _write(out, plan, report)
    return report


def _every(steps: int) -> int:
    """Rounds of a tenth of the steps (the largest divisor of ``steps`` at most that)."""
    return max(d for d in range(1, max(1, steps // 10) + 1) if steps % d == 0)


def _write(out: str, plan, report: dict) -> None:
    texts = {"plan.json": plan.to_json(), "report.json": json.dumps(report, indent=1,
                                                                    default=str),
             "report.md": render(report)}
    for name, text in texts.items():
        write_atomically(os.path.join(out, name),
                         lambda tmp, text=text: pathlib.Path(tmp).write_text(text))


def render(report: dict) -> str:
    """The report as a markdown table, one row per stage."""
    lines = ["| stage | parameters | FLOPs | test perplexity | prefill tok/s | decode tok/s |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in report["stages"]:
        flops = f"{row['flops']:,}"
        speed = row["tokens_per_second"]
        lines.append(f"| {row['stage']} | {row['params']:,} | {flops} | "
                     f"{row['perplexity']:.2f} | {speed['prefill']:.0f} | "
                     f"{speed['decode']:.1f} |")
    sizes = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in report["file_bytes"].items())
    lines += ["", f"verify: {report['verify']:.2e}; files: {sizes}; "
              f"{report['seconds']:.0f} s in all", ""]
    return "\n".join(lines)


def describe_files(report: dict) -> str:
    """The line naming the files a run wrote."""
    names = list(FILES) + [f"pruned_{m}.keras" for m in report["file_bytes"]
                           if m in QUANTIZE_MODES]
    return f"artifacts in {report['out']}: {', '.join(names)}"
