"""Child process of ``tests/test_multiworker.py``: fine-tune a pruned Keras 3 model under
``keras.distribution.DataParallel`` over the CPU devices JAX sees (the parent starts it
with ``KERAS_BACKEND=jax`` and ``XLA_FLAGS=--xla_force_host_platform_device_count=2``) and
print one JSON line with what the parent checks: the devices, the loss per epoch, how much
the weights moved, and how many devices each variable's sharding spans."""
import json
import sys

import keras  # noqa: E402  (Keras 3 first: this process runs Keras 3 on JAX)
import numpy as np

import surgery
from surgery.pipeline import finetune


def main() -> int:
    devices = keras.distribution.list_devices("cpu")
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=256)
    x = (rng.normal(size=(256, 12, 12, 1)) + (labels * 2.0 - 1.0)[:, None, None, None]
         ).astype("float32")  # class 1 is brighter
    y = np.eye(2, dtype="float32")[labels]
    inputs = keras.Input((12, 12, 1))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(inputs)
    h = keras.layers.Conv2D(8, 3, activation="relu", name="c2")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="fc")(h))
    plan = surgery.plan(model, ratio=0.5)
    pruned = surgery.apply(model, plan)
    before = [np.array(w) for w in pruned.get_weights()]
    history = finetune.finetune(pruned, (x, y), epochs=4, lr=1e-2, warmup_epochs=0,
                                batch_size=32, verbose=0)
    after = pruned.get_weights()
    spans = [len(v.value.sharding.device_set) for v in pruned.trainable_variables]
    print(json.dumps(dict(
        backend=keras.backend.backend(), devices=devices,
        distribution=type(keras.distribution.distribution()).__name__,
        widths=[pruned.get_layer(n).filters for n in ("c1", "c2")],
        loss=[float(v) for v in history.history["loss"]],
        moved=float(max(np.abs(a - b).max() for a, b in zip(after, before))),
        spans=spans,
        batch_axes=list(keras.distribution.distribution().get_data_layout(
            (32, 12, 12, 1)).axes))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
