"""Trying plans on one model of the original's shapes: a zeroed stand-in for each cut.

This module owns :class:`StandIn`, one working copy of a (flat) model on which a plan's cut
is imitated instead of carried out: the channels and units the plan deletes are zeroed with
the equivalence oracle's weights (:func:`surgery.engine.zeroing.zeroed_weights`), so the
copy computes what the cut model computes, at the original's shapes. Every plan tried on
it runs the same layers, variables and shapes, so whatever a backend compiles for one plan
serves the next: JAX caches one XLA executable per operation and shape, and a cut model of
new widths misses all of them (about 34 s per candidate of the Keras 3 default on a 2-core
CPU). :func:`surgery.calibration.candidates.choose_candidate` scores its candidates here.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np

from surgery._backend import tf
from surgery.calibration.batchnorm import DEFAULT_BATCHES, BatchNormProbe
from surgery.engine.compiled import compiled_call
from surgery.engine.flatten import flattened
from surgery.engine.graph import ModelGraph
from surgery.engine.zeroing import zeroed_weights
from surgery.pruning.plan import PrunePlan
from surgery.pruning.samples import n_examples


class StandIn:
    """A copy of ``graph``'s model (flattened) on which plans are zeroed in turn, with its
    inference call and its adaptive BN probe compiled once.

    Zeroing is exact where the equivalence oracle is (:func:`surgery.verify`), so
    :meth:`fits` refuses only plans that cross a layer whose cut is approximate (mean-centred
    LayerNormalization, ``settings["approximate"]``). A model with a layer that cannot be
    copied is refused when the copy is made (:func:`surgery.engine.adapter_base.carried`).

    Example::

        stand_in = StandIn(graph)
        with stand_in.zeroed(plan):            # computes what cut_graph(graph, plan) does
            stand_in.recalibrate(x_train)      # adaptive BN
            outputs = stand_in.outputs(x)
    """

    def __init__(self, graph: ModelGraph):
        flat = flattened(graph)
        self.graph = flat.with_model(flat.adapter.clone(flat.model))
        self.model = self.graph.model
        self._probe = BatchNormProbe(self.graph)
        self._saved = {layer: layer.get_weights() for layer in self._probe.layers}
        self._call = compiled_call(self.graph, training=False)

    def fits(self, plan: PrunePlan) -> bool:
        """Whether zeroing ``plan`` here computes exactly what its cut computes."""
        return not plan.settings.get("approximate")

    @contextmanager
    def zeroed(self, plan: PrunePlan) -> Iterator:
        """The stand-in's model with ``plan``'s deletions zeroed, within the ``with`` block;
        on leaving it, every weight zeroed and every BatchNormalization weight (which
        :meth:`recalibrate` may have re-estimated meanwhile) is the original's again."""
        changed = zeroed_weights(self.graph, plan.deletions, plan.units)
        for layer in changed:
            if layer not in self._saved:
                self._saved[layer] = layer.get_weights()
        self.graph.adapter.set_weights(changed.items())
        try:
            yield self.model
        finally:
            touched = set(changed) | set(self._probe.layers)
            self.graph.adapter.set_weights(
                [(layer, w) for layer, w in self._saved.items() if layer in touched])

    def recalibrate(self, data, batches: int = DEFAULT_BATCHES, *, batch_size: int = 32) -> None:
        """Adaptive BN of the stand-in as it is now (:func:`surgery.recalibrate_batchnorm`)."""
        if self._probe.layers:
            self._probe.recalibrate(data, batches, batch_size=batch_size)

    def outputs(self, x: np.ndarray, batch_size: int = 256) -> list:
        """The model's outputs for ``x`` in inference mode (a list of float64 arrays, one
        per output), in batches of ``batch_size``."""
        return model_outputs(self._call, x, batch_size)


def model_outputs(call: Callable[[np.ndarray], list], x: np.ndarray,
                  batch_size: int = 256) -> list:
    """The outputs of ``call`` (a :func:`~surgery.engine.compiled.compiled_call`) for
    ``x``, run in batches of ``batch_size``, as a list of float64 arrays."""
    parts = [call(tf.nest.map_structure(lambda a: a[start:start + batch_size], x))
             for start in range(0, n_examples(x), batch_size)]
    return [np.concatenate(column) for column in zip(*parts)]
