"""keras-hub models after a cut: this module owns giving a cut keras-hub backbone or task
(``Llama3CausalLM``, ``Qwen3CausalLM``, ...) its family back.

Surgery cuts a flat functional copy of a model (:mod:`surgery.engine.flatten`), so a
``Llama3CausalLM`` comes out of :func:`surgery.apply` as a plain ``keras.Model``: it
computes the right logits but has no ``generate``, no preprocessor and no ``backbone``.
A family's backbone class cannot hold the cut either: its config has one head count and
one MLP width for every block. :func:`with_family` rebuilds the cut graph as a
:class:`PrunedBackbone` (registered as ``surgery>PrunedBackbone``), a keras-hub
``Backbone`` whose config is its graph, which keeps the attributes the family's task reads
(``token_embedding``, ``transformer_layers``, ``layer_norm``, ``num_key_value_heads``,
...), and wraps it in the task's own class, rebuilt from the task's config with the
task's preprocessor (a classifier's head keeps its weights). The result is a
``Llama3CausalLM`` that generates, saves as ``.keras`` and reloads in a process that has
imported ``surgery``.

Generation caches keys and values in one tensor for all blocks, so ``generate`` needs
the same number of key/value heads in every block; a plan that cut query groups unevenly
leaves a model that scores text but logs that it cannot generate. GPT-2's blocks read
the part of their task's cache that they use (:mod:`surgery.models.hub_transformer`); one
whose key and value widths differ cannot, and the model logs the same.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Optional

from surgery.engine.adapter_base import sublayers

logger = logging.getLogger(__name__)

PACKAGE = "surgery"
_SCALARS = (bool, int, float, str, type(None))
_KERAS_KEYS = ("name", "trainable", "dtype")


def _hub_base(model, name: str) -> bool:
    """Whether a keras-hub class called ``name`` is among ``model``'s bases (keras-hub is
    not imported to ask)."""
    return any(c.__name__ == name and c.__module__.startswith("keras_hub.")
               for c in type(model).__mro__)


def is_backbone(model) -> bool:
    """Whether ``model`` is a keras-hub ``Backbone`` (a family's, or a cut one)."""
    return _hub_base(model, "Backbone")


def is_task(model) -> bool:
    """Whether ``model`` is a keras-hub ``Task`` over a backbone (``Llama3CausalLM``)."""
    return _hub_base(model, "Task") and is_backbone(getattr(model, "backbone", None))


def task_head(model) -> tuple:
    """The names of a keras-hub task's own layers with weights (a classifier's
    ``pooled_dense`` and ``output_dense``), which keep their widths so that the cut is
    rebuilt as the task (:func:`with_family`); ``()`` for anything else."""
    if not is_task(model):
        return ()
    inside = {id(layer) for layer in sublayers(model.backbone)} | {id(model.backbone)}
    return tuple(layer.name for layer in model.layers
                 if id(layer) not in inside and layer.weights)


def family_attributes(backbone) -> dict:
    """What a task reads from its backbone, by name: its layers (``{"layers": {attribute:
    layer name, [names], or {"inside": name, "at": index} for a layer another holds}}``)
    and the plain values of its config (``{"values": ...}``)."""
    ids = {id(layer) for layer in backbone.layers}
    held = {id(sub): {"inside": layer.name, "at": i} for layer in backbone.layers
            for i, sub in enumerate(sublayers(layer))}  # OPT's token embedding
    layers, cls = {}, type(backbone)
    keras_own = {k for c in cls.__mro__ if c.__module__.startswith("keras.src.")
                 for k in vars(c)}
    for key, value in vars(backbone).items():
        if key.startswith("_"):  # a property's store (``_token_embedding``), or Keras's own
            key = key[1:]
            if not isinstance(getattr(cls, key, None), property):
                continue
        if key in keras_own:  # Keras's (``layers``, ``operations``)
            continue
        if hasattr(value, "name") and id(value) in ids:
            layers[key] = value.name
        elif hasattr(value, "name") and id(value) in held:
            layers[key] = held[id(value)]
        elif (isinstance(value, (list, tuple)) and value
              and all(id(v) in ids for v in value)):
            layers[key] = [v.name for v in value]
    config = getattr(backbone, "surgery_values", None) or {
        **backbone.get_config(), **_public_scalars(backbone)}
    values = {k: v for k, v in config.items() if k not in _KERAS_KEYS
              and isinstance(v, _SCALARS)}
    return {"family": getattr(backbone, "surgery_family", type(backbone).__name__),
            "layers": layers, "values": values}


def _public_scalars(backbone) -> dict:
    """The plain values a family sets on its backbone beyond its config (Gemma 3's
    ``text_only_model``), not those every Keras model has (``built``)."""
    import keras  # Keras 3, imported on use: a Keras 2 process never loads it

    probe = keras.Input((1,))
    every_model = set(vars(keras.Model(probe, keras.layers.Identity()(probe))))
    return {k: v for k, v in vars(backbone).items() if not k.startswith("_")
            and k not in every_model and isinstance(v, _SCALARS)}


def with_family(original, cut, in_cut):
    """``cut`` (the flat functional model :func:`surgery.apply` made of ``original``)
    as a model of ``original``'s keras-hub family: a :class:`PrunedBackbone` for a
    backbone, the task's own class over one for a task; ``cut`` itself for anything else.
    ``in_cut(tensor, model)`` is the tensor of ``cut`` where ``tensor`` of ``model`` stood
    (the graph adapter's :func:`~surgery.engine.keras3.tensor_in`: graph internals stay
    there).
    """
    import keras  # Keras 3, imported on use: a Keras 2 process never loads it

    if not (is_backbone(original) or is_task(original)):
        return cut
    backbone = original.backbone if is_task(original) else original
    names = [t.name for t in cut.inputs]
    inputs = backbone.input
    if isinstance(inputs, dict):
        inputs = {key: cut.inputs[names.index(t.name)] for key, t in inputs.items()}
    else:
        inputs = cut.input
    hidden = keras.tree.map_structure(lambda t: in_cut(t, backbone), backbone.output)
    new = pruned_backbone_class()(inputs=inputs, outputs=hidden, name=backbone.name,
                                  attributes=family_attributes(backbone))
    if not is_task(original):
        return new
    return _task_over(original, new, cut)


def _task_over(original, backbone, cut):
    """``original``'s task class over ``backbone``, from ``original``'s config (a
    classifier's ``num_classes``, activation, dropout, ...), its own layers (a classifier's
    head) holding the weights of their namesakes in ``cut``; ``cut`` itself, with a
    warning, where the task cannot be rebuilt so."""
    def fallback(why: str):
        logger.warning("%s: %s, so apply() returns the cut model as a functional Keras "
                       "model (its outputs are the task's)", original.name, why)
        return cut
    try:
        config = dict(original.get_config(), backbone=backbone,
                      preprocessor=original.preprocessor)
        task = type(original).from_config(config)
    except Exception as exc:  # noqa: BLE001  (a task class's own constructor)
        return fallback(f"{type(original).__name__} cannot be rebuilt from its config "
                        f"({type(exc).__name__}: {exc})")
    names = {layer.name for layer in cut.layers}
    for layer in task.layers:
        if layer is backbone or not layer.weights:
            continue
        if layer.name not in names:
            return fallback(f"its layer '{layer.name}' has no namesake in the cut model")
        weights = cut.get_layer(layer.name).get_weights()
        if [w.shape for w in weights] != [tuple(w.shape) for w in layer.weights]:
            return fallback(f"its layer '{layer.name}' changed shape in the cut")
        layer.set_weights(weights)
    return task


def _bind(backbone, attributes: dict) -> None:
    """Set the family's attributes on a :class:`PrunedBackbone` (its layers by name)."""
    for key, value in attributes["values"].items():
        if not hasattr(type(backbone), key):
            setattr(backbone, key, value)
    for key, name in attributes["layers"].items():
        if isinstance(name, dict):  # a layer held by one of the backbone's layers
            found = sublayers(backbone.get_layer(name["inside"]))[name["at"]]
        else:
            found = ([backbone.get_layer(n) for n in name] if isinstance(name, list)
                     else backbone.get_layer(name))
        setattr(backbone, key, found)
    blocks = [backbone.get_layer(n) for n in attributes["layers"].get("transformer_layers")
              or ()]
    heads = {getattr(b, "num_key_value_heads", None) for b in blocks
             if type(b).__name__ != "SkippedBlock"}  # a removed block caches nothing
    if len(heads) == 1 and None not in heads:
        backbone.num_key_value_heads = heads.pop()
    elif len(heads) > 1:
        logger.warning("%s: its blocks keep %s key/value heads; generate() caches one "
                       "count for every block, so this model scores text but cannot "
                       "generate", backbone.name, sorted(heads))
    _check_decoder_cache(backbone, blocks)


def _check_decoder_cache(backbone, blocks: list) -> None:
    """Warn where keras-hub's generic decoder blocks (GPT-2's ``TransformerDecoder``) no
    longer fit the cache their task builds for generation: ``num_heads`` heads of width
    ``hidden_dim // num_heads`` for keys and values in every block. A cut block (an
    equivalent of :mod:`surgery.models.hub_transformer`) reads the part of it that it
    uses, unless its key and value widths differ (its ``fits_cache``)."""
    heads, hidden = getattr(backbone, "num_heads", None), getattr(backbone, "hidden_dim", None)
    if not isinstance(heads, int) or not isinstance(hidden, int) or heads < 1:
        return
    # a stock block is uncut: it fits the cache its config makes
    unfit = sorted(b.name for b in blocks if hasattr(b, "fits_cache")
                   and not b.fits_cache(heads, hidden // heads))
    if unfit:
        logger.warning("%s: blocks %s keep key and value widths that differ; generate() "
                       "caches keys and values at one width, so this model scores text but "
                       "cannot generate (plan with head_dims=False to keep them equal)",
                       backbone.name, unfit)


def _quantize(backbone, quantized: dict) -> None:
    """Quantize the layers ``quantized`` names (``{path: mode}``) as they were when saved:
    a block's config rebuilds its inner layers in float, so their weights would not load.
    """
    for layer in backbone._flatten_layers(include_self=False):
        mode = quantized.get(layer.path)
        if mode and not getattr(layer, "quantization_mode", None):
            layer.quantize(mode)


_CLASS: dict = {}


def pruned_backbone_class():
    """The :class:`PrunedBackbone` class (defined on first use: keras-hub takes seconds to
    import), registered as ``surgery>PrunedBackbone``."""
    import keras  # Keras 3, imported on use: a Keras 2 process never loads it

    if "PrunedBackbone" in _CLASS:
        return _CLASS["PrunedBackbone"]
    from keras_hub.models import Backbone  # keras-hub takes seconds to import

    @keras.saving.register_keras_serializable(package=PACKAGE, name="PrunedBackbone")
    class PrunedBackbone(Backbone):
        """A keras-hub backbone after a cut: its config holds its graph (each block its
        own widths) and what its family's task reads (``attributes``)."""

        def __init__(self, inputs=None, outputs=None, *, attributes: dict,
                     graph: Optional[dict] = None, quantized: Optional[dict] = None,
                     **kwargs: Any):
            if graph is not None:  # from a config: the layers are rebuilt from the graph
                rebuilt = keras.Model.from_config(graph)
                inputs, outputs = rebuilt.input, rebuilt.output
            kwargs.pop("dtype", None)  # each layer's policy is in the graph
            super().__init__(inputs=inputs, outputs=outputs, **kwargs)
            self.surgery_family = attributes["family"]
            self.surgery_values = dict(attributes["values"])
            self._attributes = attributes
            _bind(self, attributes)
            _quantize(self, quantized or {})

        def get_config(self) -> dict:
            graph = keras.Model(self.input, self.output, name=self.name).get_config()
            quantized = {layer.path: layer.quantization_mode
                         for layer in self._flatten_layers(include_self=False)
                         if getattr(layer, "quantization_mode", None)}
            return {"name": self.name, "trainable": self.trainable, "graph": graph,
                    "attributes": json.loads(json.dumps(self._attributes)),
                    "quantized": quantized}

        @classmethod
        def from_config(cls, config: dict):
            return cls(**config)

    _CLASS["PrunedBackbone"] = PrunedBackbone
    return PrunedBackbone


def register_lazily() -> None:
    """Let ``.keras`` files holding a :class:`PrunedBackbone` load (keras-hub is imported
    only when one does)."""
    import keras  # Keras 3, imported on use: a Keras 2 process never loads it

    class _Lazy:
        @staticmethod
        def from_config(config):
            return pruned_backbone_class().from_config(config)

    keras.saving.get_custom_objects().setdefault(f"{PACKAGE}>PrunedBackbone", _Lazy)
