"""Resuming interrupted runs: the hidden working folder of a run and Keras's BackupAndRestore.

This module owns what lets ``keras-surgery prune`` and ``keras-surgery train`` pick up a run
that was killed (SIGKILL, a reboot, a preempted VM) when the same command is run again with
the same ``--out``. Everything a run needs to resume lives in one hidden working folder,
``OUT/.unfinished/``: the settings the run was started with (``settings.json``), what finished
stages recorded (``state.json``, e.g. the plan of each pruning round, read back instead of
recomputed), and one ``backup-STAGE/`` folder per ``fit`` written by Keras's own
``callbacks.BackupAndRestore`` (tf-keras and Keras 3, all three backends) at the end of every
epoch: the weights, the optimizer's state (so its step count and the learning-rate schedule
continue) and the epoch. The visible files of the run folder are written atomically at the
end; the working folder is deleted once they all are. A finished run's folder is refused
unless the caller passes ``overwrite=True``.

>>> import tempfile, os
>>> out = tempfile.mkdtemp()
>>> folder = RunFolder(out, {"lr": 0.1}, finished="report.json")
>>> folder.check(); folder.start(); folder.resuming
False
>>> folder.state["plan"] = [1, 2]; folder.save_state()
>>> RunFolder(out, {"lr": 0.1}, finished="report.json").state["plan"]
[1, 2]
>>> RunFolder(out, {"lr": 0.2}, finished="report.json").check()
Traceback (most recent call last):
...
surgery.errors.SurgeryError: --out ... holds an unfinished run started with other settings (lr 0.1 there, 0.2 now): rerun that command to resume it, or pass --overwrite to start again
"""
from __future__ import annotations

import glob
import inspect
import json
import logging
import os
import tempfile
import shutil
import time
from types import ModuleType
from typing import Any, Dict, List, Optional

from surgery.errors import SurgeryError
from surgery.pipeline.report import atomic_write

logger = logging.getLogger(__name__)

#: name of the hidden working folder inside a run folder
WORKING = ".unfinished"

__all__ = ["RunFolder", "WORKING"]


def _first_difference(then: Dict[str, Any], now: Dict[str, Any]) -> str:
    for key in sorted(set(then) | set(now)):
        if then.get(key) != now.get(key):
            return f"{key} {then.get(key)} there, {now.get(key)} now"
    return ""


class RunFolder:
    """A run folder ``out`` that can be resumed (see the module docstring).

    ``settings`` (JSON-able) identify the run: resuming with other settings is refused.
    ``finished`` is the file whose presence says the run finished (``report.json``, or the
    trained model). ``enabled=False`` (a non-chief worker) keeps the working folder in a
    scratch folder that nothing resumes from.
    """

    def __init__(self, out: str, settings: Dict[str, Any], *, finished: str,
                 overwrite: bool = False, enabled: bool = True) -> None:
        self.out = out
        self.settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
        self.finished = os.path.join(out, finished)
        self.overwrite = overwrite
        self.enabled = enabled
        if enabled:
            self.working = os.path.join(out, WORKING)
        else:
            self.working = tempfile.mkdtemp(prefix="surgery-unfinished-")
        self.state: Dict[str, Any] = self._read("state.json") or {}
        self.resuming = self._read("settings.json") is not None
        self.resumes = int(self.state.get("resumes", 0))

    # ---------------------------------------------------------------- files
    def _read(self, name: str) -> Optional[Any]:
        path = os.path.join(self.working, name)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def _write(self, name: str, data: Any) -> None:
        atomic_write(os.path.join(self.working, name),
                     json.dumps(data, indent=1, sort_keys=True))

    def save_state(self) -> None:
        """Write :attr:`state` (atomically) into the working folder."""
        self._write("state.json", self.state)

    # ---------------------------------------------------------------- life cycle
    def check(self) -> None:
        """Refuse (``SurgeryError``, one line) a finished run's folder or an unfinished run
        with other settings, unless ``overwrite``; with it, forget both."""
        if not self.enabled:
            return
        if self.overwrite:
            if self.resuming or os.path.exists(self.finished):
                logger.info("--overwrite: starting %s again", self.out)
            if os.path.exists(self.finished):
                os.remove(self.finished)  # from here on the folder is no longer finished
            shutil.rmtree(self.working, ignore_errors=True)
            self.state, self.resuming, self.resumes = {}, False, 0
            return
        if os.path.exists(self.finished) and not self.resuming:
            raise SurgeryError(
                f"--out {self.out} holds a finished run ({os.path.basename(self.finished)}); "
                "pick another --out, or pass --overwrite to replace it")
        then = self._read("settings.json")
        if then is not None and then != self.settings:
            raise SurgeryError(
                f"--out {self.out} holds an unfinished run started with other settings "
                f"({_first_difference(then, self.settings)}): rerun that command to resume "
                "it, or pass --overwrite to start again")

    def start(self) -> None:
        """Create the working folder (recording the settings), or note the resume; remove
        temporary files that a kill during an atomic write left behind."""
        os.makedirs(self.working, exist_ok=True)
        for pattern in (".*.tmp", ".*.tmp.*") if self.enabled else ():  # write_atomically's
            for stale in glob.glob(os.path.join(glob.escape(self.out), pattern)):
                os.remove(stale)
        if self.resuming:
            self.resumes += 1
            self.state["resumes"] = self.resumes
            self.save_state()
            logger.info("resuming the unfinished run in %s (resume %d)", self.out,
                        self.resumes)
        else:
            self._write("settings.json", self.settings)

    def finish(self) -> None:
        """Delete the working folder: every artifact is in place."""
        shutil.rmtree(self.working, ignore_errors=True)

    # ---------------------------------------------------------------- training
    def seconds(self, stage: str) -> float:
        """Training seconds the finished epochs of ``stage`` took in earlier processes."""
        return float(self.state.get("seconds", {}).get(stage, 0.0))

    def callbacks(self, keras: ModuleType, stage: str, epochs: int) -> List[Any]:
        """``fit`` callbacks that back ``stage`` up after every epoch and resume it: Keras's
        ``BackupAndRestore`` (its folder kept until :meth:`finish`, so that a kill after the
        last epoch still finds it) and a log line per epoch (``stage: epoch 2/5 backed up``,
        ``stage: resuming at epoch 3/5``). None on a non-chief worker (nothing resumes)."""
        if not self.enabled:
            return []
        backup_dir = os.path.join(self.working, "backup-" + stage.replace(" ", "-"))
        kwargs: Dict[str, Any] = {"delete_checkpoint": False}
        if "double_checkpoint" in inspect.signature(
                keras.callbacks.BackupAndRestore.__init__).parameters:
            kwargs["double_checkpoint"] = True  # Keras 3 writes its backup in place
        backup = keras.callbacks.BackupAndRestore(backup_dir, **kwargs)
        before = self.seconds(stage)
        started = {"at": time.perf_counter(), "first": True}

        def train_begin(logs=None) -> None:
            started["at"] = time.perf_counter()

        def epoch_begin(epoch: int, logs=None) -> None:
            if started["first"] and epoch > 0:
                logger.info("%s: resuming at epoch %d/%d from %s", stage, epoch + 1, epochs,
                            backup_dir)
            started["first"] = False

        def epoch_end(epoch: int, logs=None) -> None:
            spent = before + time.perf_counter() - started["at"]
            self.state.setdefault("seconds", {})[stage] = round(spent, 3)
            self.save_state()
            logger.info("%s: epoch %d/%d backed up", stage, epoch + 1, epochs)

        def train_end(logs=None) -> None:
            if started["first"]:
                logger.info("%s: all %d epochs were done before; restored from %s", stage,
                            epochs, backup_dir)

        marker = keras.callbacks.LambdaCallback(on_train_begin=train_begin,
                                                on_epoch_begin=epoch_begin,
                                                on_epoch_end=epoch_end, on_train_end=train_end)
        return [backup, marker]
