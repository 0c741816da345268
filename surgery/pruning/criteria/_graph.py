"""What the criteria need to know about a model, asked of the layer rules and the graph
adapter: which layers can be scored and their filter matrices, a layer's call in the
model and its consumers, and the single-consumer chain walks used by ``apoz``,
``bn_gamma`` and ``thinet``. It reads models only and keeps no per-layer table.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np

from surgery.engine.graph import ModelGraph
from surgery.engine.rules import CHANNELWISE, PRODUCER, LayerRule, rule_for
from surgery.errors import SurgeryError
from surgery.pruning.criteria._registry import logger


def _scorable(info) -> bool:
    rule = rule_for(info)
    return rule is not None and type(rule).filter_matrix is not LayerRule.filter_matrix


def _call(graph: ModelGraph, layer) -> Any:
    """The layer's call that makes its channels, if one call does; else its first call in
    the graph's model (data-driven criteria use that one)."""
    calls = graph.nodes_of(layer)
    name = graph.model.name
    if not calls:
        raise SurgeryError(f"layer {layer.name!r} is not connected in model {name!r}")
    producing = [c for c in calls if rule_for(c.info) is not None
                 and rule_for(c.info).flow_of(c.info) == PRODUCER]
    if len(calls) > 1 and len(producing) == 1:  # one call makes the channels (a language
        return producing[0]  # model's embedding, also called in reverse as its output)
    if len(calls) > 1:
        logger.warning("layer %r is called %d times in model %r; data-driven criteria use "
                       "its first call", layer.name, len(calls), name)
    return calls[0]


def _resolve_layers(graph: ModelGraph, names: Sequence[str]) -> list:
    """The scorable layers named ``names`` (:class:`SurgeryError` for any other name)."""
    if isinstance(names, str):
        raise SurgeryError(f"layer_names must be a sequence of names, got the string {names!r}")
    graph.require_functional()
    model = graph.model
    by_name = {layer.name: layer for layer in model.layers}
    layers = []
    for name in names:
        if not isinstance(name, str):
            raise SurgeryError(
                f"layer_names must hold layer names (strings), got a {type(name).__name__}; "
                "pass layer.name")
        if name not in by_name:
            raise SurgeryError(
                f"unknown layer {name!r}: model {model.name!r} has no top-level layer of that "
                "name (see model.summary(); layers of nested models must be named in them)")
        layer = by_name[name]
        calls = graph.nodes_of(layer)
        if not calls or not _scorable(calls[0].info):
            raise SurgeryError(
                f"layer {name!r} ({type(layer).__name__}) has no prunable output channels; "
                "criteria score layers whose rule gives a filter matrix (convolutions, "
                "Dense, recurrent layers, …)")
        layers.append(layer)
    return layers


def _info(graph: ModelGraph, layer):
    return graph.nodes_of(layer)[0].info


def _filter_matrix(graph: ModelGraph, layer) -> np.ndarray:
    """The layer's weights as ``(out_channels, fan)``: one row per output channel."""
    info = _info(graph, layer)
    return np.asarray(rule_for(info).filter_matrix(info))


def _n_out_channels(graph: ModelGraph, layer) -> int:
    return int(_filter_matrix(graph, layer).shape[0])


def _channel_axis(graph: ModelGraph, layer) -> int:
    info = _info(graph, layer)
    return 1 if rule_for(info).channel_axis(info) == 0 else -1


def _follow_chain(graph: ModelGraph, node, passthrough: Callable[[Any], bool],
                  target: Callable[[Any], bool]) -> Optional[Any]:
    """Walk the single-consumer chain from ``node`` through calls for which
    ``passthrough(info)`` holds to the first call with ``target(info)``; ``None`` when
    the chain forks, ends or hits anything else."""
    current = node
    for _ in range(len(graph.model.layers) + 1):
        consumers = graph.consumers(current)
        if len(consumers) != 1:
            return None
        nxt = consumers[0]
        if target(nxt.info):
            return nxt
        if not passthrough(nxt.info):
            return None
        current = nxt
    return None


def _activation(info) -> str:
    rule = rule_for(info)
    return rule.activation(info) if rule is not None else ""


def _is_relu_like(info) -> bool:
    """True for calls whose output is exactly zero wherever the input is not positive."""
    rule = rule_for(info)
    return rule is not None and rule.relu_like(info)


def _is_identity_like(info) -> bool:
    rule = rule_for(info)
    return rule is not None and rule.identity(info)


def _keeps_channels(info) -> bool:
    """Channel ``c`` in, channel ``c`` out (a one-to-one channel-wise layer)."""
    rule = rule_for(info)
    return rule is not None and rule.flow_of(info) == CHANNELWISE and \
        rule.multiplier(info) == 1


def _channel_scale(info) -> Optional[np.ndarray]:
    rule = rule_for(info)
    return None if rule is None else rule.channel_scale(info)


def _linear_window(info) -> Optional[dict]:
    rule = rule_for(info)
    return None if rule is None else rule.linear_window(info)
