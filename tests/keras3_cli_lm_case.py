"""``keras-surgery prune`` on a keras-hub causal LM and a folder of text, run in a Keras 3
child process by tests/test_cli_language.py: ``python tests/keras3_cli_lm_case.py WORK``
writes a small corpus, trains a tiny ``Llama3CausalLM`` on it for a few steps, saves it,
runs the command (cut to 60 % of the parameters by activation, distil, quantize int8),
reloads what it wrote and prints one JSON line; then runs it on a model that is not a
language model and records the exit status and the error line.
"""
import contextlib
import io
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import keras  # noqa: E402
import keras_hub  # noqa: E402

WORDS = "the model reads text and the cut keeps what matters most in every block".split()


def make(work: str) -> tuple:
    from surgery.text_data import load_text

    folder = os.path.join(work, "text")
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for i in range(8):
        with open(os.path.join(folder, f"doc{i}.txt"), "w") as f:
            f.write("\n".join(" ".join(rng.choice(WORDS, 12)) for _ in range(40)))
    cache = os.path.join(work, "cache")
    text = load_text(folder, vocabulary_size=320, sequence_length=16, cache_dir=cache)
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=text.vocabulary_size, num_layers=2, num_query_heads=4,
        num_key_value_heads=2, hidden_dim=32, intermediate_dim=64)
    lm = keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=None)
    lm.compile(optimizer="adam",
               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    lm.fit(text.dataset("train", 8).repeat(), steps_per_epoch=30, epochs=1, verbose=0)
    path = os.path.join(work, "lm.keras")
    lm.save(path)
    inputs = keras.Input((4,))
    plain = os.path.join(work, "plain.keras")
    keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(plain)
    return folder, cache, path, plain


def main(work: str) -> None:
    from surgery.cli.prune import main as prune

    folder, cache, path, plain = make(work)
    out = os.path.join(work, "out")
    common = ["--data", folder, "--sequence-length", "16", "--batch-size", "8",
              "--eval-batches", "3", "--calibration-sequences", "16", "--text-cache", cache]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = prune(["--model-path", path, "--params-target", "0.6", "--criterion",
                        "activation", "--distill", "--distill-steps", "6", "--quantize",
                        "int8", "--out", out, "--quiet"] + common)
    report = json.load(open(os.path.join(out, "report.json")))
    small = keras.saving.load_model(os.path.join(out, "pruned.keras"))
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        refused = prune(["--model-path", plain, "--out", os.path.join(work, "no")] + common)
    print("RESULT " + json.dumps({
        "status": status, "printed": stdout.getvalue()[-600:], "report": report,
        "files": sorted(os.listdir(out)),
        "candidate_scores": json.load(open(os.path.join(out, "plan.json")))["settings"].get(
            "candidate_scores"),
        "reloaded": [type(small).__name__,
                                                      small.count_params()],
        "input_unchanged": os.path.getsize(path) == report["file_bytes"]["original"],
        "refused": [refused, stderr.getvalue()], "no_folder": os.path.exists(
            os.path.join(work, "no"))}))


if __name__ == "__main__":
    main(sys.argv[1])
