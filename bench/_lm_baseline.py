"""The trained baseline of ``bench/lm.py``: a keras-hub Llama built from the bench's
arguments, trained from scratch on the corpus's train split (AdamW, warmup then cosine over a
wall-clock or step budget, stopped early when validation perplexity stops improving),
cached as ``.keras`` with a JSON of its training, and read back."""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Dict

import keras
import keras_hub

import surgery
from _outputs import read_json, write_json

logger = logging.getLogger("bench.lm")


def causal_lm(args, vocabulary_size: int) -> keras.Model:
    """A Llama-style keras-hub ``Llama3CausalLM`` (random init, no preprocessor: it is fed
    token batches)."""
    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=vocabulary_size, num_layers=args.layers,
        num_query_heads=args.heads, num_key_value_heads=args.kv_heads,
        hidden_dim=args.hidden, intermediate_dim=args.mlp,
        tie_word_embeddings=args.tie_embeddings)
    return keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=None)


def baseline_tag(args) -> str:
    return (f"l{args.layers}_h{args.hidden}_q{args.heads}_kv{args.kv_heads}_m{args.mlp}"
            f"_v{args.vocab}_s{args.seq_len}_b{args.batch}_t{int(args.tie_embeddings)}"
            f"_min{args.train_minutes:g}_n{args.train_steps}"
            + (f"_seed{args.seed}" if args.seed else ""))


class WallClockCosine(keras.callbacks.Callback):
    """AdamW's learning rate: a linear warmup over ``warmup`` steps, then a cosine down to
    a tenth of ``peak``, over whichever ends first, ``max_steps`` or ``minutes`` of wall
    clock (the schedule follows the time budget, so a busy machine still ends its decay);
    stops training at the end. Every ``every`` steps the validation perplexity is measured:
    the best weights are kept and training stops after ``patience`` evaluations without
    improvement (early stopping)."""

    def __init__(self, peak, warmup, max_steps, minutes, every, patience, val_batches):
        super().__init__()
        self.peak, self.warmup, self.max_steps = peak, warmup, max_steps
        self.seconds, self.every, self.patience = minutes * 60.0, every, patience
        self.val, self.step, self.start = val_batches, 0, None
        self.best, self.best_weights, self.bad = math.inf, None, 0
        self.history: Dict[str, list] = dict(step=[], seconds=[], loss=[], val_perplexity=[],
                                             lr=[])

    def progress(self) -> float:
        return max(self.step / self.max_steps, (time.time() - self.start) / self.seconds)

    def on_train_batch_begin(self, batch, logs=None):
        if self.start is None:
            self.start = time.time()
        if self.step < self.warmup:
            lr = self.peak * (self.step + 1) / self.warmup
        else:
            lr = self.peak * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, self.progress()))))
        self.model.optimizer.learning_rate = lr

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.progress() >= 1.0:
            self.model.stop_training = True
        if self.step % self.every == 0 or self.model.stop_training:
            self.evaluate(logs or {})

    def evaluate(self, logs):
        ppl = surgery.perplexity(self.model, self.val)
        h = self.history
        for key, value in (("step", self.step), ("seconds", time.time() - self.start),
                           ("loss", float(logs.get("loss", math.nan))),
                           ("val_perplexity", ppl),
                           ("lr", float(self.model.optimizer.learning_rate))):
            h[key].append(value)
        logger.info("training: step %d, loss %.3f, validation perplexity %.2f, lr %.2e, "
                    "%.1f min, %.2f s/step", self.step, h["loss"][-1], ppl, h["lr"][-1],
                    h["seconds"][-1] / 60, h["seconds"][-1] / self.step)
        if ppl < self.best:
            self.best, self.bad = ppl, 0
            self.best_weights = self.model.get_weights()
        else:
            self.bad += 1
            if self.bad >= self.patience:
                logger.info("training: no improvement in %d evaluations, stopping", self.bad)
                self.model.stop_training = True


def train_baseline(text, args) -> tuple:
    """Train the LM from scratch (AdamW, warmup + wall-clock cosine, early stopping on the
    validation perplexity); the model (best weights) and its record."""
    keras.utils.set_random_seed(args.seed)
    model = causal_lm(args, text.vocabulary_size)
    model.compile(optimizer=keras.optimizers.AdamW(args.lr, weight_decay=0.1, clipnorm=1.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    val = list(text.batches("validation", args.batch, targets=True,
                            num_batches=args.val_batches))
    schedule = WallClockCosine(args.lr, args.warmup, args.train_steps, args.train_minutes,
                               args.eval_every, args.patience, val)
    logger.info("baseline: training %s (%d parameters) for up to %d steps / %.0f min",
                baseline_tag(args), model.count_params(), args.train_steps, args.train_minutes)
    start = time.time()
    epochs = math.ceil(args.train_steps / args.eval_every)
    model.fit(text.dataset("train", args.batch).repeat(), epochs=epochs,
              steps_per_epoch=args.eval_every, callbacks=[schedule], verbose=0)
    seconds = time.time() - start
    if schedule.best_weights is not None:
        model.set_weights(schedule.best_weights)  # early stopping keeps the best evaluation
    h = schedule.history
    meta = dict(vocabulary_size=text.vocabulary_size, train_seconds=seconds, steps=schedule.step,
                tokens=schedule.step * args.batch * args.seq_len,
                seconds_per_step=seconds / max(1, schedule.step),
                best_val_perplexity=schedule.best, history=h,
                epochs_of_train_split=schedule.step * args.batch * args.seq_len
                / len(text.train))
    logger.info("baseline: %d steps in %.1f min (%.2f s/step), best validation perplexity "
                "%.2f", schedule.step, seconds / 60, meta["seconds_per_step"], schedule.best)
    return model, meta


def baseline(text, args) -> tuple:
    """The trained baseline and its record: from the cache in ``--work-dir`` when there,
    else trained and saved (atomically, with its history as JSON)."""
    path = os.path.join(args.work_dir, f"baseline_{baseline_tag(args)}.keras")
    meta_path = path[:-len(".keras")] + ".json"
    if os.path.isfile(path):
        logger.info("baseline: cached %s", path)
        meta = read_json(meta_path)
        return load_lm(path, args, meta), dict(meta, path=path, cached=True)
    model, meta = train_baseline(text, args)
    save_lm(model, path, args)
    write_json(meta_path, meta)
    return model, dict(meta, path=path, cached=False)


def save_lm(model, path: str, args) -> None:
    """Save the trained LM as ``.keras`` without its optimizer, atomically. Not through
    ``surgery``'s ``save_model_atomic``: it copies the model through ``from_config``, and
    keras-hub 0.32's ``LlamaBackbone.get_config`` drops ``tie_word_embeddings``, so the copy
    is untied (21 weights, not 20) and ``set_weights`` fails."""
    clean = causal_lm(args, model.backbone.vocabulary_size)
    clean.set_weights(model.get_weights())
    tmp = f"{path}.tmp{os.getpid()}.keras"
    clean.save(tmp)
    os.replace(tmp, path)


def load_lm(path: str, args, meta: dict) -> keras.Model:
    """The cached LM: rebuilt from the arguments, then its weights read from the ``.keras``
    file (``load_model`` would rebuild it untied; see :func:`save_lm`)."""
    model = causal_lm(args, meta.get("vocabulary_size", args.vocab))
    model.load_weights(path)
    return model
