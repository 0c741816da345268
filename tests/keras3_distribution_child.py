"""Child process of ``tests/test_keras3_distribution.py``: ``keras-surgery prune --keras 3``
with ``--strategy mirrored`` on the TensorFlow backend (two logical CPU devices, configured
before TensorFlow starts) or ``--strategy dataparallel`` on JAX (the parent forces two host
devices with ``XLA_FLAGS``). Prints one JSON line: the exit status, the report's replica
count and strategy, and the files of the run folder. Usage: ``python
keras3_distribution_child.py STRATEGY OUT``."""
import json
import os
import sys


def main() -> int:
    strategy, out = sys.argv[1], sys.argv[2]
    if os.environ.get("KERAS_BACKEND") == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras  # noqa: F401  (Keras 3 first: this process runs Keras 3)

    from surgery.cli import prune

    status = prune.main(["--keras", "3", "--model", "lenet5", "--image-size", "16",
                         "--baseline-epochs", "1", "--finetune-epochs", "2",
                         "--batch-size", "32", "--ratio", "0.5", "--no-plots", "--quiet",
                         "--strategy", strategy, "--out", out])
    report = {}
    if status == 0:
        with open(os.path.join(out, "report.json")) as fh:
            report = json.load(fh)
    print(json.dumps(dict(status=status, replicas=report.get("replicas"),
                          strategy=report.get("strategy"),
                          acc_finetuned=report.get("acc_finetuned"),
                          files=sorted(os.listdir(out)) if os.path.isdir(out) else [])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
