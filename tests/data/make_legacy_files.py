"""How the files in this folder were made: run at commit 578e8c0 (before the hand-written
warmup-cosine schedules gave way to Keras's ``CosineDecay``), with that commit's classes.
It is kept as a record; the classes it names no longer exist.

    TF_USE_LEGACY_KERAS=1 python tests/data/make_legacy_files.py keras2
    KERAS_BACKEND=tensorflow python tests/data/make_legacy_files.py keras3

Each model is a Dense(4 -> 3) whose kernel carries the three registered penalties, compiled
with Adam under an old schedule, trained one step so the optimizer has state, and saved
with it. ``legacy_schedules.json`` records the old schedules' learning rates at a few steps.
"""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = [0, 3, 9, 10, 11, 40, 99, 100, 150]
FT = dict(peak_lr=1e-2, total_steps=100, warmup_steps=10, final_fraction=0.1)
TR = dict(init_lr=0.05, total_steps=100, warmup_steps=10, kind="cosine")


def rates(schedule):
    return [float(schedule(s)) for s in STEPS]


def build(keras, penalties, schedule):
    reg = penalties.CombinedRegularizer([penalties.GroupLasso(1e-3), keras.regularizers.L1(1e-4),
                                         penalties.AngularDissimilarity(1e-3)])
    inp = keras.Input((4,))
    out = keras.layers.Dense(3, activation="softmax", kernel_regularizer=reg, name="fc")(inp)
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(schedule), loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(8, 4)).astype("float32"),
              np.eye(3, dtype="float32")[rng.integers(0, 3, 8)], epochs=1, verbose=0)
    return model


def main(kind):
    record_path = os.path.join(HERE, "legacy_schedules.json")
    record = json.load(open(record_path)) if os.path.exists(record_path) else {"steps": STEPS}
    if kind == "keras2":
        import surgery  # noqa: F401
        from surgery import keras
        from surgery.pipeline import finetune, regularizers, schedules

        for name, schedule in (("finetune", finetune.WarmupCosine(**FT)),
                               ("train", schedules.WarmupSchedule(**TR))):
            build(keras, regularizers, schedule).save(os.path.join(HERE, f"legacy_keras2_{name}.h5"))
            record[f"keras2_{name}"] = {"config": schedule.get_config(), "rates": rates(schedule)}
    else:
        import keras
        import surgery  # noqa: F401
        from surgery.cli import train_keras3
        from surgery.pipeline import regularizers3, training3

        for name, schedule in (("finetune", training3.WarmupCosine(**FT)),
                               ("train", train_keras3.WarmupSchedule(**TR))):
            build(keras, regularizers3, schedule).save(
                os.path.join(HERE, f"legacy_keras3_{name}.keras"))
            record[f"keras3_{name}"] = {"config": schedule.get_config(), "rates": rates(schedule)}
    with open(record_path, "w") as f:
        json.dump(record, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
