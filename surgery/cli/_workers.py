"""Which process of a multi-worker run writes the artifacts, and where the others write.

Under ``--strategy multiworker`` (``tf.distribute.MultiWorkerMirroredStrategy``, one process
per worker, each with its own ``TF_CONFIG``) every worker runs the whole pipeline in step,
because training all-reduces gradients across them; only one of them, the *chief*, may write
the run folder. This module owns that rule, following Keras's multi-worker convention: the
chief is the task of type ``"chief"``, or ``"worker"`` 0 when the cluster has no ``"chief"``
task; a process outside any cluster (every other strategy, every Keras 3 run) is its own
chief. The other workers still save their artifacts, exactly as the chief does (so that any
step that synchronises the workers happens on all of them), but into a temporary folder that
is deleted afterwards, so they never touch the chief's folder.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from typing import Any, Iterator, Optional, Tuple

logger = logging.getLogger("prune_and_finetune")

__all__ = ["worker_task", "is_chief", "worker_name", "artifact_folder"]


def worker_task(strategy: Any) -> Tuple[Optional[str], Optional[int], dict]:
    """``(task_type, task_id, cluster_spec_dict)`` of this process under ``strategy``;
    ``(None, None, {})`` when it has no cluster (default, mirrored, Keras 3's ``None``)."""
    resolver = getattr(strategy, "cluster_resolver", None) if strategy is not None else None
    if resolver is None:
        return None, None, {}
    try:
        spec = resolver.cluster_spec().as_dict()
    except Exception:  # noqa: BLE001  (a resolver with no cluster spec: a lone process)
        spec = {}
    return resolver.task_type, resolver.task_id, spec


def is_chief(strategy: Any) -> bool:
    """Whether this process writes the run's artifacts (see the module docstring).

    Example:
        >>> is_chief(None)
        True
    """
    task_type, task_id, spec = worker_task(strategy)
    if task_type is None or task_type == "chief":
        return True
    return task_type == "worker" and not task_id and "chief" not in spec


def worker_name(strategy: Any) -> str:
    """This process in words, e.g. ``worker 1 of 2``; empty outside a cluster."""
    task_type, task_id, spec = worker_task(strategy)
    if task_type is None:
        return ""
    return f"{task_type} {task_id} of {len(spec.get(task_type, ())) or '?'}"


@contextlib.contextmanager
def artifact_folder(out: str, chief: bool) -> Iterator[str]:
    """The folder to write this run's artifacts into.

    On the chief it is ``out``, created if needed and removed again if it was created here
    and writing fails. On any other worker it is a fresh temporary folder, deleted when the
    block ends, however it ends.
    """
    if not chief:
        scratch = tempfile.mkdtemp(prefix="surgery-worker-")
        logger.info("not the chief worker: writing into %s (deleted afterwards); the chief "
                    "writes %s", scratch, out)
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    created = not os.path.exists(out)
    try:
        os.makedirs(out, exist_ok=True)
        yield out
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
