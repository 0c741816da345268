"""Running a model for the data-driven criteria, on every Keras generation and backend.

It owns what ``apoz``, ``thinet`` and ``taylor`` need from a forward pass:
:func:`forward`, the values of some internal tensors on a batch as NumPy arrays,
:func:`taylor_products`, the activation times the gradient of the summed per-example loss
w.r.t. it, and :func:`weight_gradients`, that loss's gradient w.r.t. layers' weights (for
scoring attention heads, which no tensor carries; JAX through ``stateless_call``). tf-keras models and Keras 3 models on TensorFlow use ``tf.GradientTape``;
Keras 3 on PyTorch differentiates the probe's outputs with ``torch.autograd.grad``; Keras
3 on JAX replays the graph (the adapter's ``walk``) with a zero perturbation added to each
activation and takes ``jax.grad`` w.r.t. the perturbations. Batches from a
``tf.data.Dataset`` are turned into NumPy arrays for the JAX and PyTorch backends.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from surgery._backend import keras as keras2, tf
from surgery.engine.graph import ModelGraph


def backend_of(graph: ModelGraph) -> str:
    """``"keras2"`` for a tf-keras model, else the Keras 3 backend name."""
    return graph.backend


def _numpy(value) -> np.ndarray:
    """A tensor of any backend as NumPy, keeping its dtype."""
    if hasattr(value, "detach"):  # PyTorch
        value = value.detach().cpu()
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        return np.asarray(value.numpy())
    return np.asarray(value)


def batch_for(graph: ModelGraph, value: Any) -> Any:
    """``value`` (``x`` or ``y``) in a form the model's backend takes: NumPy leaves on JAX
    and PyTorch (a ``tf.data.Dataset`` yields TensorFlow tensors)."""
    if value is None or backend_of(graph) in ("keras2", "tensorflow"):
        return value
    return tf.nest.map_structure(_numpy, value)


def _model_inputs(graph: ModelGraph, x: Any) -> Any:
    """A single array for a one-input Keras 3 model goes in as ``[x]``, the structure the
    adapter's probe models are built with."""
    if backend_of(graph) != "keras2" and len(graph.inputs()) == 1 \
            and not isinstance(x, (list, tuple, dict)):
        return [x]
    return x


def _as_list(outs: Any) -> list:
    return list(outs) if isinstance(outs, (list, tuple)) else [outs]


def forward(graph: ModelGraph, probe, x: Any) -> list[np.ndarray]:
    """The outputs of ``probe`` (a sub-model of the graph's model) on batch ``x``, in
    inference mode, as NumPy arrays."""
    outs = probe(_model_inputs(graph, batch_for(graph, x)), training=False)
    return [_numpy(t) for t in _as_list(outs)]


def _loss_keras2(y: Any, pred: Any, probabilities: bool) -> Any:
    """Cross-entropy of ``pred`` vs ``y`` (one-hot or integer labels), one value per element."""
    pred = tf.convert_to_tensor(pred)
    y = tf.convert_to_tensor(y)
    n_classes = pred.shape[-1]
    if n_classes == 1:
        y = tf.reshape(tf.cast(y, pred.dtype), tf.shape(pred))
        return keras2.losses.binary_crossentropy(y, pred, from_logits=not probabilities)
    sparse = y.shape.rank < pred.shape.rank or (y.shape[-1] == 1 and n_classes != 1)
    if sparse:
        y = tf.cast(tf.reshape(y, tf.shape(pred)[:-1]), tf.int64)
        return keras2.losses.sparse_categorical_crossentropy(
            y, pred, from_logits=not probabilities)
    return keras2.losses.categorical_crossentropy(
        tf.cast(y, pred.dtype), pred, from_logits=not probabilities)


def _loss_keras3(y: Any, pred: Any, probabilities: bool) -> Any:
    """:func:`_loss_keras2` written with Keras 3 ops (any backend)."""
    import keras  # lazy: a Keras 2 process never imports Keras 3
    from keras import ops

    y = np.asarray(_numpy(y))
    n_classes = pred.shape[-1]
    if n_classes == 1:
        y = ops.reshape(ops.cast(y, pred.dtype), ops.shape(pred))
        return keras.losses.binary_crossentropy(y, pred, from_logits=not probabilities)
    if y.ndim < len(pred.shape) or (y.shape[-1] == 1 and n_classes != 1):
        y = y.reshape(tuple(pred.shape[:-1])).astype("int32")
        return keras.losses.sparse_categorical_crossentropy(
            y, pred, from_logits=not probabilities)
    return keras.losses.categorical_crossentropy(
        ops.cast(y, pred.dtype), pred, from_logits=not probabilities)


def per_example_loss(graph: ModelGraph, y: Any, pred: Any, probabilities: bool) -> Any:
    """Cross-entropy of ``pred`` vs ``y`` with the ops of the model's generation."""
    if backend_of(graph) == "keras2":
        return _loss_keras2(y, pred, probabilities)
    return _loss_keras3(y, pred, probabilities)


def taylor_probe(graph: ModelGraph, tensors: Sequence) -> Any:
    """The sub-model :func:`taylor_products` runs: ``tensors`` plus the model's output
    (JAX: ``tensors`` only, the gradient comes from a replay)."""
    if backend_of(graph) == "jax":
        return graph.submodel(list(tensors))
    return graph.submodel(list(tensors) + [graph.outputs()[0]])


def taylor_products(graph: ModelGraph, probe, tensors: Sequence, x: Any, y: Any,
                    probabilities: bool) -> list[np.ndarray]:
    """``a * dL/da`` for each internal tensor ``a`` of ``tensors`` on batch ``(x, y)``, where
    ``L`` is the summed per-example cross-entropy of the model's single output; NumPy
    arrays of the activations' shapes (zero where ``a`` does not reach the output).
    ``probe`` is :func:`taylor_probe` of the same tensors."""
    backend = backend_of(graph)
    if backend == "jax":
        return _products_jax(graph, probe, tensors, x, y, probabilities)
    if backend == "torch":
        import torch  # lazy: an optional backend

        outs = _as_list(probe(_model_inputs(graph, batch_for(graph, x)), training=False))
        loss = per_example_loss(graph, y, outs[-1], probabilities).sum()
        grads = torch.autograd.grad(loss, outs[:-1], allow_unused=True)
        return [_numpy(a * g) if g is not None else np.zeros(tuple(a.shape), _numpy(a).dtype)
                for a, g in zip(outs[:-1], grads)]
    x = tf.nest.map_structure(tf.convert_to_tensor, x)
    with tf.GradientTape() as tape:
        for leaf in tf.nest.flatten(x):
            if leaf.dtype.is_floating:
                tape.watch(leaf)
        outs = _as_list(probe(_model_inputs(graph, x), training=False))
        loss = tf.reduce_sum(per_example_loss(graph, y, outs[-1], probabilities))
    grads = tape.gradient(loss, outs[:-1], unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return [_numpy(a * g) for a, g in zip(outs[:-1], grads)]


def _products_jax(graph: ModelGraph, probe, tensors: Sequence, x: Any, y: Any,
                  probabilities: bool) -> list[np.ndarray]:
    """JAX has no gradient w.r.t. an intermediate value, so the graph is replayed with
    ``a + eps`` in place of each ``a`` and differentiated w.r.t. ``eps`` at zero."""
    import jax  # lazy: an optional backend
    import jax.numpy as jnp

    acts = forward(graph, probe, x)
    targets = {graph.key(t): i for i, t in enumerate(tensors)}
    x = batch_for(graph, x)
    xs = ([x[name] for name in graph.input_names()] if isinstance(x, dict)
          else _as_list(_model_inputs(graph, x)))
    slot = {graph.key(t): i for i, t in enumerate(graph.inputs())}
    out_key = graph.key(graph.outputs()[0])

    def loss_fn(eps):
        def visit(node, values):
            outs = node.call(node.layer, values)
            return [o + eps[targets[k]] if k in targets else o
                    for o, k in zip(outs, node.output_keys)]

        values = graph.walk(visit, lambda t: jnp.asarray(xs[slot[graph.key(t)]]))
        return jnp.sum(per_example_loss(graph, y, values[out_key], probabilities))

    grads = jax.grad(loss_fn)([jnp.zeros(a.shape, a.dtype) for a in acts])
    return [a * np.asarray(g) for a, g in zip(acts, grads)]


def weight_gradients(graph: ModelGraph, layers: Sequence, x: Any, y: Any, probabilities: bool
                     ) -> dict[str, list[np.ndarray]]:
    """``{layer name: [dL/dw for w in layer.weights]}`` on batch ``(x, y)``, ``L`` the
    summed per-example cross-entropy of the model's single output (zeros for weights
    that do not reach it)."""
    backend = backend_of(graph)
    model = graph.model
    variables = [v for layer in layers for v in layer.weights]
    inputs = _model_inputs(graph, batch_for(graph, x))
    if backend == "jax":
        import jax  # lazy: an optional backend

        trainable = list(model.trainable_variables)
        position = {id(v): i for i, v in enumerate(trainable)}
        non_trainable = [v.value for v in model.non_trainable_variables]

        def loss_fn(values):
            outs, _ = model.stateless_call(values, non_trainable, inputs, training=False)
            return per_example_loss(graph, y, _as_list(outs)[0], probabilities).sum()

        grads = jax.grad(loss_fn)([v.value for v in trainable])
        found = [grads[position[id(v)]] if id(v) in position else None for v in variables]
    elif backend == "torch":
        import torch  # lazy: an optional backend

        outs = _as_list(model(inputs, training=False))
        loss = per_example_loss(graph, y, outs[0], probabilities).sum()
        found = list(torch.autograd.grad(loss, [v.value for v in variables],
                                         allow_unused=True))
    else:
        handles = [v.value if backend != "keras2" else v for v in variables]
        with tf.GradientTape() as tape:
            tape.watch(handles)
            outs = _as_list(model(inputs, training=False))
            loss = tf.reduce_sum(per_example_loss(graph, y, outs[0], probabilities))
        found = tape.gradient(loss, handles,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
    result, i = {}, 0
    for layer in layers:
        grads = []
        for v in layer.weights:
            g = found[i]
            grads.append(np.zeros(tuple(v.shape)) if g is None else _numpy(g))
            i += 1
        result[layer.name] = grads
    return result
