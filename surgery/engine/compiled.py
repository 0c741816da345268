"""A model's call compiled once for its backend, reading the model's weights at every call.

This module owns :func:`compiled_call`: ``model(x, training=...)`` as a function that each
backend compiles once per input shape and then reuses for as long as the model lives, while
its weights change in between (assigned variables are read afresh, never baked in). That is
what lets :mod:`~surgery.calibration.stand_in` score many plans on one model for the price of
one compile, and :func:`surgery.verify` run a new model once without compiling each of its
operations on its own: on TensorFlow (tf-keras, or Keras 3's TensorFlow backend) it is a
``tf.function``; on Keras 3's JAX backend ``jax.jit`` of the model's ``stateless_call``, the
variables passed in as arguments and the updated non-trainable ones (BatchNormalization's
moving statistics in training mode, Dropout's seed) assigned back, as an eager call does,
and depthwise convolutions traced in the form XLA runs fast on a CPU
(:mod:`~surgery.engine.xla_depthwise`); on PyTorch the eager call itself (PyTorch compiles
nothing per shape). Run eagerly, JAX dispatches a model op by op, each op an XLA computation
of its own, so one jitted call of the whole model is also many times faster once compiled.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from surgery._backend import tf
from surgery.engine.graph import ModelGraph
from surgery.engine.xla_depthwise import shifted_depthwise
from surgery.engine.zeroing import output_leaves, to_numpy


def compiled_call(graph: ModelGraph, training: bool) -> Callable[[np.ndarray], list]:
    """``graph.model(x, training=training)`` compiled once for the model's backend; the
    returned function takes a batch of inputs and returns the outputs as a list of float64
    NumPy arrays, with the weights the model holds at that call.

    >>> from surgery._backend import keras
    >>> x = keras.Input((2,)); m = keras.Model(x, keras.layers.Dense(1, name="d")(x))
    >>> call = compiled_call(ModelGraph(m), training=False)
    >>> m.get_layer("d").set_weights([np.ones((2, 1)), np.zeros(1)])
    >>> call(np.array([[1.0, 2.0]], "float32"))[0].tolist()
    [[3.0]]
    >>> m.get_layer("d").set_weights([np.ones((2, 1)), np.ones(1)])  # no new compile
    >>> call(np.array([[1.0, 2.0]], "float32"))[0].tolist()
    [[4.0]]
    """
    model, backend = graph.model, graph.backend
    if backend == "jax":
        return _jitted(model, training)
    if backend in ("keras2", "tensorflow"):
        forward = tf.function(lambda x: model(x, training=training), autograph=False,
                              reduce_retracing=True)
        return lambda x: _as_list(forward(x))
    return lambda x: _as_list(model(x, training=training))


def _jitted(model, training: bool) -> Callable[[np.ndarray], list]:
    import jax  # lazy: an optional backend

    @jax.jit
    def forward(trainable, non_trainable, x):
        return model.stateless_call(trainable, non_trainable, x, training=training)

    def call(x):
        with shifted_depthwise():  # traced (at a new shape) with XLA's fast depthwise form
            outs, non_trainable = forward([v.value for v in model.trainable_variables],
                                          [v.value for v in model.non_trainable_variables], x)
        for variable, value in zip(model.non_trainable_variables, non_trainable):
            variable.assign(value)
        return _as_list(outs)

    return call


def run_once(graph: ModelGraph, x, compiled: bool = True) -> list:
    """The outputs of ``graph``'s model on one batch ``x``, in inference mode, as a list of
    float64 arrays (a dict of outputs by sorted key): an eager call where that compiles
    nothing (TensorFlow, PyTorch), one compiled call on JAX, where an eager call of a model
    of new shapes compiles each of its operations on its own (about 15 s for a pruned
    MobileNetV2 on a 2-core CPU, against a few seconds for the whole model at once).
    ``compiled=False``: the eager call on JAX too (a compiled call of a bfloat16 model on
    a CPU holds all its weights again in float32 while it runs)."""
    if compiled and graph.backend == "jax":
        return compiled_call(graph, training=False)(x)
    return _as_list(graph.model(x, training=False))


def _as_list(outs) -> list:
    return [to_numpy(o) for o in output_leaves(outs)]

