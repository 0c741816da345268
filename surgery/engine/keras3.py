"""The Keras 3 graph adapter: the only module that touches Keras 3 graph internals.

It offers the same small interface as :mod:`surgery.engine.keras2`, for models built
with Keras 3 on any backend: walking a functional model's nodes in topological order
(``Functional._nodes_by_depth``; a Sequential model through its inner functional graph),
including calls of non-layer operations (``x + y`` is a ``keras.src.ops.numpy.Add``,
``ops.relu6`` a ``Relu6``), describing each call as a
:class:`~surgery.engine.rules.LayerInfo`, replaying a call with other tensors
(``Node.arguments.fill_in``), fresh inputs, models nesting inputs/outputs like another, and
:func:`rebuild`, which replays the whole model through the public
``keras.models.clone_model(clone_function=...)`` with new configs for the layers a surgery
changed (Keras re-infers every downstream shape) and then sets their sliced weights.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import keras
from keras import tree
from keras.src.backend.common import global_state
from keras.src.backend.common.variables import initialize_all_variables
from keras.src.ops.function import make_node_key

from surgery.errors import SurgeryError
from surgery.engine import adapter_base, hub_models
from surgery.engine.rules import LayerInfo
from surgery.engine.rules.base import CLASS_KEY

#: attributes of non-layer operations that rules read as config (``Concatenate``'s axis)
_OP_ATTRIBUTES = ("axis", "axes", "newshape", "new_shape", "pad_width", "mode")
_PLAIN = (bool, int, float, str, type(None))


#: the Keras module that builds this generation's models
KERAS = keras


def moments(tensor, axes: tuple) -> tuple:
    """Symbolic per-channel count, mean and sum of squared deviations of ``tensor`` over
    ``axes`` (a probe's outputs: the statistics are reduced where the model runs; the count
    is read from the tensor, whose positions may be known only when it runs)."""
    ops = keras.ops
    mean = ops.mean(tensor, axis=axes, keepdims=True)
    count = ops.sum(ops.ones_like(tensor, dtype="int32"), axis=axes)  # exact past 2**24
    return (count, ops.reshape(mean, (-1,)), ops.sum(ops.square(tensor - mean), axis=axes))


def backend_name() -> str:
    """The Keras 3 backend of this process: ``"tensorflow"``, ``"jax"`` or ``"torch"``."""
    return keras.backend.backend()


def _graph(model):
    """The functional graph of a model (a built Sequential keeps one inside)."""
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    return model if hasattr(model, "_nodes_by_depth") else None


def require_functional(model) -> None:
    """Refuse models whose graph surgery cannot see (subclassed, or never built)."""
    if not isinstance(model, keras.Model):
        raise SurgeryError(f"expected a keras.Model, got {type(model).__name__}")
    if _graph(model) is None:
        raise SurgeryError(
            f"model '{model.name}' ({type(model).__name__}) is not a functional model: a "
            "subclassed model's graph is Python code that surgery cannot see, and a "
            "Sequential model must be built with an input shape first. Rebuild it with the "
            "functional API (keras.Input(...) → layers → keras.Model) or give the Sequential "
            "model a keras.Input first.")


def is_nested(layer) -> bool:
    """True for a functional or Sequential model used as a layer of another model."""
    return isinstance(layer, keras.Model) and _graph(layer) is not None


def key(tensor) -> int:
    """The identity of a symbolic tensor within one model."""
    return id(tensor)


def _shape(tensor) -> tuple:
    return tuple(tensor.shape)[1:]


def _equivalent(layer):
    """surgery's registered equivalent of a layer's class (``surgery>ClassName``), if any
    (:mod:`surgery.models.hub_blocks`)."""
    return keras.saving.get_registered_object(f"surgery>{type(layer).__name__}")


def layer_config(layer) -> dict:
    """A layer's config: the one its registered equivalent reads from it where the
    equivalent can (keras-hub 0.32's ``LlamaTransformerDecoder``, whose own
    ``get_config`` raises, and ``Qwen3TransformerDecoder``, whose own leaves out
    ``head_dim``), else its own."""
    equivalent = _equivalent(layer)
    config = equivalent.config_of(layer) if hasattr(equivalent, "config_of") else None
    if config is None:
        return layer.get_config()
    return dict(config, **{CLASS_KEY: f"surgery>{type(layer).__name__}"})


def _config(op, node=None) -> dict:
    try:
        config = layer_config(op)
    except Exception:  # noqa: BLE001 — an op without a config is described by its name
        config = {"name": op.name}
    if not isinstance(op, keras.layers.Layer):
        for attr in _OP_ATTRIBUTES:
            if attr not in config and hasattr(op, attr):
                config[attr] = getattr(op, attr)
        # plain keyword arguments of the call (``ops.pad``'s ``constant_values``)
        kwargs = node.arguments.kwargs if node is not None and not node.is_input else {}
        for name, value in kwargs.items():
            if isinstance(value, _PLAIN):
                config.setdefault(name, value)
    return config


def _unbuilt(spec):
    """A layer config without the ``build_config`` of the layers nested in it (a wrapped
    layer would be built for its old input shape; it builds itself when called)."""
    if isinstance(spec, dict):
        return {k: _unbuilt(v) for k, v in spec.items() if k != "build_config"}
    if isinstance(spec, list):
        return [_unbuilt(v) for v in spec]
    return spec


def _no_weights() -> list:
    return []


class Node(adapter_base.NodeBase):
    """One call of a layer or operation in a model: the operation, its tensors."""

    __slots__ = ()

    def __init__(self, node):
        super().__init__(node, node.operation, lambda: node.input_tensors, node.outputs)

    @property
    def info(self) -> LayerInfo:
        """The call described for the layer rules (read afresh: weights may change)."""
        op = self.layer
        is_layer = isinstance(op, keras.layers.Layer)
        return LayerInfo(
            class_name=type(op).__name__, name=op.name, config=_config(op, self._node),
            input_shapes=[_shape(t) for t in self.inputs],
            output_shape=_shape(self.outputs[0]) if self.outputs else (),
            op=None if is_layer else type(op).__name__, layer=op,
            load_weights=op.get_weights if is_layer else _no_weights,
            input_roles=adapter_base.input_roles(op, self._node.arguments.args,
                                             self._node.arguments.kwargs, self.inputs,
                                             tree.flatten) if is_layer else [],
            keras=3)

    def call(self, layer, tensors: Sequence) -> list:
        """Call ``layer`` with this node's original arguments, its tensors replaced;
        returns the output tensors as a flat list."""
        table = {id(old): new for old, new in zip(self.inputs, tensors)}
        args, kwargs = self._node.arguments.fill_in(table)
        return tree.flatten(layer(*args, **kwargs))

    def run(self, tensors: Sequence, weights: Optional[list] = None) -> list:
        """This call's output tensors (a flat list) on backend ``tensors`` at inference, as
        ``model(x)`` runs it, its layer reading ``weights`` (``get_weights()`` order;
        ``None``: its own) in a ``StatelessScope``: its variables stay untouched."""
        op = self.layer
        table = {id(old): new for old, new in zip(self.inputs, tensors)}
        args, kwargs = self._node.arguments.fill_in(table)
        if "training" in getattr(op, "_call_context_args", ()):
            kwargs["training"] = False
        if not weights:
            return tree.flatten(op(*args, **kwargs))
        with keras.StatelessScope(state_mapping=list(zip(op.weights, weights))):
            return tree.flatten(op(*args, **kwargs))


_NODES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def nodes(model) -> list[Node]:
    """The model's calls in topological order (input nodes included), computed once per
    model (a functional graph never changes)."""
    cached = _NODES.get(model)
    if cached is None:
        by_depth = _graph(model)._nodes_by_depth
        cached = [Node(n) for d in sorted(by_depth, reverse=True) for n in by_depth[d]]
        _NODES[model] = cached
    return cached


def inputs(model) -> list:
    return list(_graph(model).inputs)


def outputs(model) -> list:
    return list(_graph(model).outputs)


def walk(model, visit: Callable[[Node, list], Any], start: Callable[[Any], Any]) -> dict:
    """Visit every call once in topological order; ``visit(node, inbound_values)`` returns
    one value for all outputs, or a list with one per output. ``start(tensor)`` gives the
    values of the model's inputs. Returns ``{tensor key: value}``."""
    return adapter_base.walk(nodes(model), inputs(model), visit, start)


def run_calls(model, x, run: Callable[[Node, list], list]):
    """``model(x)`` at inference, call by call: ``run(node, input tensors)`` runs each (as
    :meth:`Node.run` does) and returns its outputs; the model's outputs are nested as
    ``model(x)`` nests them. The inputs are read, and the calls run under the autocast
    scope (a model whose own policy is mixed casts every variable read), as in ``model(x)``.
    """
    start = dict(zip(map(key, inputs(model)), _graph(model)._standardize_inputs(x)))
    scope = contextlib.nullcontext()
    if model.autocast and model.compute_dtype != model.variable_dtype:
        scope = keras.src.backend.AutocastScope(model.compute_dtype)
    with scope:
        values = walk(model, run, lambda t: start[key(t)])
    return tree.pack_sequence_as(_graph(model)._outputs_struct,
                                 [values[key(t)] for t in outputs(model)])


def input_names(model) -> list[str]:
    return [t._keras_history.operation.name for t in inputs(model)]


def fresh_inputs(model) -> list:
    """New ``Input`` tensors like the model's, with the same names."""
    return [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=name)
            for t, name in zip(inputs(model), input_names(model))]


def build_model(model, new_inputs: list, new_outputs: list):
    """A functional model nesting ``new_inputs``/``new_outputs`` the way ``model`` does."""
    graph = _graph(model)
    return keras.Model(tree.pack_sequence_as(graph._inputs_struct, new_inputs),
                       tree.pack_sequence_as(graph._outputs_struct, new_outputs),
                       name=model.name)


def new_layer(layer, config: Optional[dict] = None):
    """A fresh layer of ``layer``'s class from ``config`` (its own config by default);
    layers nested in it (``TimeDistributed``, ``Bidirectional``) are built when called.
    A class whose own config cannot rebuild it (keras-hub's ``ViTPatchingAndEmbedding``)
    is rebuilt as surgery's registered equivalent ``surgery>ClassName``, if there is one.
    The layer's own classes are known by name
    (:func:`surgery.engine.adapter_base.own_classes`)."""
    config = dict(layer_config(layer) if config is None else config)
    cls = type(layer)
    if CLASS_KEY in config:  # a rule rebuilds it as a registered equivalent
        cls = keras.saving.get_registered_object(config.pop(CLASS_KEY))
    with keras.saving.custom_object_scope(adapter_base.own_classes(layer)):
        try:
            return cls.from_config(_unbuilt(config))
        except Exception:
            equivalent = _equivalent(layer) if cls is type(layer) else None
            if equivalent is None:
                raise
            return equivalent.from_config(_unbuilt(config))


def with_family(original, cut):
    """``cut``, made of ``original``, as a model of ``original``'s keras-hub family
    where it has one (:func:`surgery.engine.hub_models.with_family`)."""
    return hub_models.with_family(original, cut,
                                  lambda t, source: tensor_in(cut, t, source))


def tensor_in(cut, tensor, source):
    """The tensor of ``cut`` that stands where ``tensor`` of model ``source`` stood: the
    same output of the same call (ALBERT calls one block several times) of the layer of
    the same name."""
    layer, node, index = tensor._keras_history
    calls = _calls_in(source, layer)
    copy = cut.get_layer(layer.name)
    return copy._inbound_nodes[_calls_in(cut, copy)[calls.index(node)]].output_tensors[index]


def _calls_in(model, layer) -> list:
    """The indices of ``layer``'s inbound nodes that belong to ``model``'s graph (a layer
    may also have been called in other models), in the order they were made."""
    return [i for i in range(len(layer._inbound_nodes))
            if make_node_key(layer, i) in model._nodes]


def set_weights(pairs: Iterable[tuple], model=None) -> None:
    """Set ``(layer, weights)`` pairs (layers must be built), then initialise whatever
    variable (of ``model``, if given) :func:`_clone_model` left without a value and no
    weight set. ``pairs`` may be a generator: each layer's NumPy copy is freed before the
    next is read (all at once, they would be one more copy of the model)."""
    for layer, weights in pairs:
        if weights:
            layer.set_weights(list(weights))
        del weights  # the NumPy copy goes before the next layer's is read
    _initialize_the_rest(model)


def _clone_model(model, clone_function: Callable):
    """``keras.models.clone_model``, its layers built without running their initializers
    on JAX (their weights are set right after, by :func:`set_weights`; on JAX every
    initializer of a new shape compiles an XLA computation of its own: 16 s of a pruned
    MobileNetV2's 16.3 s rebuild on a 2-core CPU). A compiled model's copy is compiled by
    :func:`_finish_clone`, once its variables hold values."""
    if not _defers_initializers():
        return keras.models.clone_model(model, clone_function=clone_function)
    compiled = getattr(model, "compiled", False)
    model.compiled = False  # compiling makes optimizer variables, which need values now
    try:
        with keras.StatelessScope(initialize_variables=False):
            return keras.models.clone_model(model, clone_function=clone_function)
    finally:
        model.compiled = compiled


def _defers_initializers() -> bool:
    """Whether :func:`_clone_model` builds layers without running their initializers: on
    JAX, unless a distribution is set (a variable takes its layout from the distribution
    only when it is initialised; one given its value later would stay on one device)."""
    return keras.backend.backend() == "jax" and keras.distribution.distribution() is None


def _finish_clone(model, copy) -> None:
    """After :func:`_clone_model` and :func:`set_weights`: compile the copy as the model
    was compiled (``clone_model`` does that itself off JAX), its optimizer's variables made
    at the first training step, as after ``compile`` (building them now would compile an
    XLA computation per weight shape on JAX)."""
    if _defers_initializers() and getattr(model, "compiled", False):
        copy.compile(**keras.saving.deserialize_keras_object(model.get_compile_config()))


def _initialize_the_rest(model=None) -> None:
    """Initialise the variables :func:`_clone_model` left that no weight was set for (a seed
    generator's state), and forget the others, and those not ``model``'s: a block that
    builds a sublayer twice (``surgery>LlamaTransformerDecoder``) leaves variables nothing
    reads, whose initialisers took 10 s and 0.8 GB of a 1 B-parameter Llama's cut."""
    pending = global_state.get_global_attribute("uninitialized_variables") or []
    pending = [v for v in pending if v._value is None]
    if model is not None:
        owned = {id(v) for v in model.variables}
        pending = [v for v in pending if id(v) in owned]
    global_state.set_global_attribute("uninitialized_variables", pending)
    initialize_all_variables()


def clone(model):
    """A copy of ``model`` with its own layers and the same weights (a layer whose config
    cannot rebuild it is refused by :func:`carried`: never shared). The weights are copied
    layer by layer, so that one layer's NumPy copy exists at a time."""
    made: list = []

    def clone_function(layer):
        made.append((layer, carried(layer)))
        return made[-1][1]

    copy = _clone_model(model, clone_function)
    set_weights(((new, layer.get_weights()) for layer, new in made
                 if isinstance(layer, keras.layers.Layer) and new is not layer), copy)
    _finish_clone(model, copy)
    return copy


def carried(layer):
    """A copy of a layer that no cut touches (:func:`surgery.engine.adapter_base.carried`)."""
    return adapter_base.carried(layer, new_layer)


def rebuild(model, replaced: Mapping[int, tuple]):
    """A copy of ``model`` in which the layers in ``replaced`` (``id(layer)`` ->
    ``(config, weights)``) are rebuilt from the new config and given the new weights
    (``None``: built fresh from the config); every other layer is :func:`carried` over
    with its weights. Keras infers every downstream shape while replaying the graph.
    ``replaced`` is emptied as the new weights are set."""
    made: dict[int, tuple] = {}

    def clone_function(layer):
        if id(layer) not in replaced:
            new = carried(layer)
        else:
            try:
                new = new_layer(layer, replaced[id(layer)][0])
            except Exception as err:  # a config Keras cannot build: say which layer
                raise SurgeryError(f"rebuilding layer '{layer.name}' "
                                   f"({type(layer).__name__}) after channel deletion "
                                   f"failed: {err}") from err
        made[id(layer)] = (layer, new)
        return new

    try:
        copy = _clone_model(model, clone_function)
    except SurgeryError:
        raise
    except Exception as err:  # a cut that Keras cannot wire up
        raise SurgeryError(f"rebuilding model '{model.name}' after channel deletion "
                           f"failed: {err}") from err
    set_weights(_rebuilt_weights(made, replaced), copy)
    _finish_clone(model, copy)
    return copy


def _rebuilt_weights(made: dict, replaced: dict):
    """``(new layer, weights)`` of :func:`rebuild`, read one layer at a time; a replaced
    layer's are taken out of ``replaced``, so that each sliced copy is freed once set."""
    for layer_id, (layer, new) in made.items():
        if isinstance(layer, keras.layers.Layer) and new is not layer:
            weights = (replaced.pop(layer_id)[1] if layer_id in replaced
                       else layer.get_weights())
            if weights:
                yield new, weights


def output_layer(model):
    """The layer (or operation) that makes the model's first output."""
    return outputs(model)[0]._keras_history.operation


def submodel(model, tensors: list):
    """A model from ``model``'s inputs to the given internal tensors (for probing)."""
    return keras.Model(inputs(model), tensors)
