"""The per-generation pieces of the ``prune`` pipeline: which Keras, and how it loads, trains,
evaluates and saves.

The stages of :mod:`surgery.cli._run` are written once; everything in them that differs
between Keras 2 (tf-keras, kerassurgeon, ``tf.distribute``, ``.h5``) and Keras 3
(TensorFlow, JAX or PyTorch backend, Keras 3's own optimizer/schedule/``fit``, ``.keras``)
comes from a :class:`Kit`, built by :func:`kit_for_process` for the generation this
process imported first (the CLI start-up decides that, :func:`surgery._startup.keras_generation`).
It also owns loading a model file (``--model-path``, ``train``'s ``--restore``) with one
clear line when the file cannot be loaded. The training functions are the same for both
generations (:mod:`surgery.pipeline.finetune` asks the model which Keras built it); the Kit
holds them so the stages call one object.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import zipfile
from types import ModuleType
from typing import Any, Callable, Optional, Tuple

from surgery._backend import legacy_tf_keras
from surgery._startup import file_keras_generation
from surgery.cli.usage import UsageError  # re-exported for the stages
from surgery.errors import SurgeryError
from surgery.export.saving import save_model_atomic
from surgery.model_files import check_model_file
from surgery.pipeline import distribution, finetune
from surgery.pipeline.generation import of_process
from surgery.pipeline.report import gzip_size


@dataclasses.dataclass
class Kit:
    """What the pipeline needs from one Keras generation (see the module docstring)."""

    generation: int
    keras: ModuleType
    backend: str
    finetune: Callable[..., Any]
    evaluate: Callable[[Any, Any], float]
    set_bn_momentum: Callable[[Any, Optional[float]], int]
    ext: str  # file extension of saved models: "h5" or "keras"

    @property
    def label(self) -> str:
        """``Keras 2 (tf-keras)`` or ``Keras 3 (jax backend)``."""
        return "Keras 2 (tf-keras)" if self.generation == 2 else \
            f"Keras 3 ({self.backend} backend)"

    # ---------------------------------------------------------------- strategies
    def make_strategy(self, name: str):
        if self.generation == 2:
            if name == "dataparallel":
                raise UsageError("--strategy dataparallel is Keras 3 on JAX "
                                 "(keras.distribution); Keras 2 runs take mirrored, "
                                 "multiworker or tpu")
            return finetune.make_strategy(name)
        try:
            return distribution.make_keras3_strategy(name, self.backend)
        except SurgeryError as exc:
            raise UsageError(str(exc)) from None

    def scope(self, strategy):
        return distribution.scope(strategy)

    def clone_into(self, model, strategy):
        if self.generation == 2:
            return finetune.clone_into(model, strategy)
        if strategy is None or not hasattr(strategy, "num_replicas_in_sync"):
            return model  # no strategy, or DataParallel: set globally, variables follow it
        return self.copy_model(model, strategy)  # variables under the tf.distribute scope

    @staticmethod
    def replicas(strategy) -> int:
        return distribution.replicas(strategy)

    def copy_model(self, model, strategy):
        """A same-weights copy (the frozen distillation teacher)."""
        with self.scope(strategy):
            copy = self.keras.models.clone_model(model)
            copy.set_weights(model.get_weights())
        return copy

    # ---------------------------------------------------------------- data
    def fit_data(self, dataset):
        """A split as this backend's ``fit`` takes it (tf.data on TensorFlow, else arrays)."""
        return finetune.fit_data(dataset, self.backend)

    # ---------------------------------------------------------------- files
    def load(self, path: str, trust_code: bool = False):
        """Load ``path`` with this process's Keras, or raise :class:`UsageError` with one
        line naming the file's format, the Keras generation and the way out."""
        written_by = file_keras_generation(path)
        if written_by is not None and written_by != self.generation:
            raise UsageError(
                f"{path} ({_describe(path)}) was written by Keras {written_by}, but this "
                f"process runs {self.label}; run it through prune_and_finetune.py / "
                "keras-surgery prune, which load a file with the Keras that wrote it")
        try:  # refuse files whose loading would run code (Lambda bytecode) unless trusted
            check_model_file(path, trust_code=trust_code)
        except SurgeryError as exc:
            raise UsageError(str(exc).splitlines()[0]) from None
        try:
            model = self.keras.models.load_model(path, compile=False,
                                                 safe_mode=not trust_code)
        except Exception as exc:  # noqa: BLE001  (h5py/keras raise many kinds for bad files)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() \
                else type(exc).__name__
            hint = ("pass a whole model saved by model.save() as .keras (Keras 3) or .h5 "
                    "(Keras 2 or 3), with any custom layers registered")
            if self.generation == 3 and written_by == 3 and not path.endswith(".keras"):
                hint = ("Keras 3 cannot load back an .h5 of a model that uses keras.ops "
                        "operations (such as x + y): save it with model.save('model.keras')")
            raise UsageError(f"cannot load {path} ({_describe(path)}) with {self.label}: "
                             f"{reason}; {hint}") from None
        if not isinstance(model, self.keras.Model):
            raise UsageError(f"{path} does not hold a Keras model")
        return model

    def save(self, model, path: str, forbid: Optional[str] = None) -> str:
        return save_model_atomic(model, path, forbid=forbid)

    def saved_sizes(self, model) -> Tuple[int, int]:
        """Bytes and gzipped bytes of ``model`` saved as the pruned model is."""
        with tempfile.TemporaryDirectory(prefix="surgery-size-") as folder:
            path = self.save(model, os.path.join(folder, f"model.{self.ext}"))
            return os.path.getsize(path), gzip_size(path)

    def model_kwargs(self) -> dict:
        """Extra arguments for :mod:`surgery.models` builders."""
        return {} if self.generation == 2 else {"keras_module": self.keras}


def _describe(path: str) -> str:
    """The file's format in words (``a .keras zip``, ``an HDF5 .h5 file``, ...)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return "unreadable"
    if head == b"\x89HDF\r\n\x1a\n":
        written = file_keras_generation(path)
        return "an HDF5 .h5 file" + (f" written by Keras {written}" if written else
                                     " with no Keras model config")
    if zipfile.is_zipfile(path):
        written = file_keras_generation(path)
        return "a .keras zip" + (f" written by Keras {written}" if written else
                                 " without metadata.json")
    return "neither a .keras zip nor an HDF5 .h5 file"


def process_generation() -> int:
    """3 when this process imported Keras 3 before ``surgery`` (tf.keras is not tf-keras)."""
    return 2 if legacy_tf_keras() else 3


def kit_for_process() -> Kit:
    """The :class:`Kit` of the Keras generation this process runs."""
    generation = of_process()
    return Kit(generation.number, generation.keras, generation.backend, finetune.finetune,
               finetune.evaluate_accuracy, finetune.set_bn_momentum,
               "keras" if generation.keras3 else "h5")


__all__ = ["Kit", "UsageError", "kit_for_process", "process_generation"]
