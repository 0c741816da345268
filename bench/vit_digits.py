"""A small ViT classifier on digits, cut by half its FLOPs through the command line.

Trains a small Vision Transformer (Keras 3, TensorFlow backend; 16x16x1 digits from
scikit-learn, 4x4 patches so 16 tokens, hidden width 64, 2 pre-norm blocks of
``MultiHeadAttention(4, 16)`` and a GELU MLP of 256, mean token, softmax over 10 classes)
for ``--epochs`` epochs, saves it as ``vit_digits.keras`` in ``--work-dir``, and runs
``prune_and_finetune.py --model-path vit_digits.keras --flops-target 0.5`` on it in a
child process, like any user would (the plan cuts the MLP widths; the hidden width crosses
mean-centred LayerNormalization and stays, heads stay under a FLOPs target). Prints the
baseline, after-surgery and fine-tuned test accuracies from the run's report.

Run::

    python bench/vit_digits.py --seed 0
    python bench/vit_digits.py --seed 1 -- --distill   # after --: more prune flags
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(work_dir: str, seed: int, epochs: int) -> str:
    """Train the ViT and save it; returns the ``.keras`` path."""
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ.pop("TF_USE_LEGACY_KERAS", None)
    import keras  # Keras 3 first: surgery then works on Keras 3 models

    sys.path.insert(0, ROOT)
    from surgery import data as dg

    keras.utils.set_random_seed(seed)
    splits = dg.load_splits("digits", image_size=(16, 16), channels=1, batch_size=32, seed=0)
    (xt, yt), (xv, yv) = dg.as_arrays(splits.train), dg.as_arrays(splits.val)
    layers = keras.layers
    width, heads, mlp, blocks = 64, 4, 256, 2
    x = keras.Input((16, 16, 1), name="image")
    h = layers.Reshape((16, width))(layers.Conv2D(width, 4, strides=4, name="patch")(x))
    for i in range(blocks):
        a = layers.LayerNormalization(name=f"ln{i}a")(h)
        h = layers.Add()([h, layers.MultiHeadAttention(heads, width // heads,
                                                       name=f"mha{i}")(a, a)])
        m = layers.Dense(mlp, activation="gelu", name=f"mlp{i}_up")(
            layers.LayerNormalization(name=f"ln{i}b")(h))
        h = layers.Add()([h, layers.Dense(width, name=f"mlp{i}_down")(m)])
    h = layers.GlobalAveragePooling1D()(layers.LayerNormalization(name="ln_out")(h))
    model = keras.Model(x, layers.Dense(10, activation="softmax", name="head")(h),
                        name="vit_digits")
    model.compile(keras.optimizers.Adam(2e-3), "categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(xt, yt, validation_data=(xv, yv), epochs=epochs, batch_size=32, verbose=2)
    path = os.path.join(work_dir, "vit_digits.keras")
    model.save(path)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0,
                   help="the baseline's initialisation and training order (the data split "
                        "stays the command line's default, seed 0, in both steps)")
    p.add_argument("--epochs", type=int, default=40, help="baseline training epochs")
    p.add_argument("--finetune-epochs", type=int, default=30)
    p.add_argument("--work-dir", default=os.path.join("runs", "bench_vit_digits"))
    args = p.parse_args(argv)
    work = os.path.join(args.work_dir, f"seed{args.seed}")
    os.makedirs(work, exist_ok=True)
    path = train(work, args.seed, args.epochs)
    out = os.path.join(work, "run")
    subprocess.run([sys.executable, os.path.join(ROOT, "prune_and_finetune.py"),
                    "--model-path", path, "--flops-target", "0.5", "--finetune-epochs",
                    str(args.finetune_epochs), "--no-plots", "--overwrite", "--quiet",
                    "--out", out, *extra], check=True, cwd=ROOT)  # --seed 0: the same split
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    print(f"seed {args.seed}: FLOPs {report['flops_before']:,} -> {report['flops_after']:,}; "
          f"test accuracy {report['acc_baseline']:.2%} -> {report['acc_pruned']:.2%} after "
          f"surgery -> {report['acc_finetuned']:.2%} after fine-tuning "
          f"({100 * (report['acc_finetuned'] - report['acc_baseline']):+.2f} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
