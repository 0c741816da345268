"""Wrappers: ``TimeDistributed`` and ``Bidirectional`` are cut by the rule of the layer
they wrap. ``TimeDistributed(layer)`` is ``layer`` applied at every time step, so it flows
and cuts exactly like it, on shapes without the time axis. ``Bidirectional(rnn)`` owns the
units of both directions: with ``merge_mode="concat"`` output channel ``c < units`` is a
forward unit and ``units + c`` a backward one; with ``sum``/``ave``/``mul`` channel ``c``
is unit ``c`` of both."""
from __future__ import annotations

import dataclasses

import numpy as np

from surgery.errors import SurgeryError, UnsupportedLayerError
from surgery.engine.rules.base import MIXING, PRODUCER, LayerRule
from surgery.engine.rules.registry import register_rule, rule_for


def _inner(info, key, weights, shift=1):
    spec = info.config[key]
    inner = dataclasses.replace(
        info, class_name=spec["class_name"], config=spec["config"], load_weights=None,
        _weights=weights, input_shapes=[tuple(s)[shift:] for s in info.input_shapes],
        output_shape=tuple(info.output_shape)[shift:], layer=None)
    rule = rule_for(inner)
    if rule is None:
        raise UnsupportedLayerError(info, f"no rule for the wrapped {spec['class_name']}")
    return inner, rule


def _rewrap(config, key, inner_config):
    config = dict(config)
    config[key] = dict(config[key], config=inner_config)
    return config


@register_rule("TimeDistributed")
class TimeDistributedRule(LayerRule):
    def _parts(self, info):
        return _inner(info, "layer", info.weights)

    def flow_of(self, info) -> str:
        inner, rule = self._parts(info)
        return rule.flow_of(inner)

    def channels(self, info):
        inner, rule = self._parts(info)
        return rule.channels(inner)

    def _wrap(self, info, result):
        if result is None:
            return None
        config, weights = result
        return _rewrap(info.config, "layer", config), weights

    def cut_outputs(self, info, channels):
        inner, rule = self._parts(info)
        return self._wrap(info, rule.cut_outputs(inner, channels))

    def cut_inputs(self, info, masks):
        inner, rule = self._parts(info)
        return self._wrap(info, rule.cut_inputs(inner, [np.asarray(m)[0] for m in masks]))

    def zero_outputs(self, info, channels):
        inner, rule = self._parts(info)
        return rule.zero_outputs(inner, channels)

    def zero_inputs(self, info, keep):
        inner, rule = self._parts(info)
        return rule.zero_inputs(inner, keep)

    def filter_matrix(self, info):
        inner, rule = self._parts(info)
        return rule.filter_matrix(inner)

    def has_channel_weights(self, info) -> bool:
        inner, rule = self._parts(info)
        return rule.has_channel_weights(inner)

    def multiplier(self, info) -> int:
        inner, rule = self._parts(info)
        return rule.multiplier(inner)

    def flops(self, info) -> int:
        inner, rule = self._parts(info)
        return rule.flops(inner) * int(info.input_shape[0] or 1)


@register_rule("Bidirectional")
class BidirectionalRule(LayerRule):
    flow = PRODUCER

    def _parts(self, info):
        half = len(info.weights) // 2
        forward = _inner(info, "layer", info.weights[:half], shift=0)
        key = "backward_layer" if "backward_layer" in info.config else "layer"
        backward = _inner(info, key, info.weights[half:], shift=0)
        return forward, backward, key

    def flow_of(self, info) -> str:
        mode = info.config.get("merge_mode", "concat")
        return PRODUCER if mode in ("concat", "sum", "ave", "mul") else MIXING

    def blocks(self, info) -> int:
        """With ``concat``, both directions lose the same number of units: Keras 3 infers
        the output width as twice the forward layer's."""
        return 2 if info.config.get("merge_mode", "concat") == "concat" else 1

    def _split(self, info, channels):
        units = int(info.config["layer"]["config"]["units"])
        channels = np.asarray(channels, int)
        if info.config.get("merge_mode", "concat") == "concat":
            return channels[channels < units], channels[channels >= units] - units
        return channels, channels

    def channels(self, info) -> int:
        return int(info.output_shape[-1])

    def cut_outputs(self, info, channels):
        (f, frule), (b, brule), key = self._parts(info)
        fch, bch = self._split(info, channels)
        units = int(info.config["layer"]["config"]["units"])
        if len(fch) == units or len(bch) == units:
            raise SurgeryError(f"layer {info.describe()}: each direction must keep a unit")
        fconfig, fweights = frule.cut_outputs(f, fch) if len(fch) else (f.config, f.weights)
        bconfig, bweights = brule.cut_outputs(b, bch) if len(bch) else (b.config, b.weights)
        config = _rewrap(info.config, "layer", fconfig)
        if key == "backward_layer":
            config = _rewrap(config, key, bconfig)
        elif len(fch) != len(bch):
            # the directions lose different units: give the backward layer its own config
            # (as tf-keras recreates it from the forward one: go_backwards flipped)
            bconfig = dict(bconfig, go_backwards=not bconfig.get("go_backwards", False))
            config["backward_layer"] = dict(info.config["layer"], config=bconfig)
        return config, list(fweights) + list(bweights)

    def zero_outputs(self, info, channels):
        (f, frule), (b, brule), _ = self._parts(info)
        fch, bch = self._split(info, channels)
        fw = frule.zero_outputs(f, fch) if len(fch) else f.weights
        bw = brule.zero_outputs(b, bch) if len(bch) else b.weights
        return list(fw) + list(bw)

    def cut_inputs(self, info, masks):
        (f, frule), (b, brule), _ = self._parts(info)
        fcut, bcut = frule.cut_inputs(f, masks), brule.cut_inputs(b, masks)
        if fcut is None:
            return None
        return info.config, list(fcut[1]) + list(bcut[1])

    def filter_matrix(self, info):
        (f, frule), (b, brule), _ = self._parts(info)
        fm, bm = frule.filter_matrix(f), brule.filter_matrix(b)
        if info.config.get("merge_mode", "concat") == "concat":
            return np.concatenate([fm, bm], axis=0)
        return np.concatenate([fm, bm], axis=1)

    def flops(self, info) -> int:
        (f, frule), (b, brule), _ = self._parts(info)
        return frule.flops(f) + brule.flops(b)
