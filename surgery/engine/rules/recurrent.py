"""Recurrent layers (``SimpleRNN``, ``GRU``, ``LSTM``): producers of ``units`` channels.

Kernels are ``(in, gates·units)`` and ``(units, gates·units)`` with the gates side by side
(LSTM ``i f c o``, GRU ``z r h``); a unit owns one column per gate and one row of the
recurrent kernel. A unit is zeroed by zeroing its candidate gate (``c`` / ``h``, or the
only gate of SimpleRNN): from a zero initial state its state and output then stay exactly
zero, provided the activation maps 0 to 0.
"""
from __future__ import annotations

import numpy as np

from surgery.errors import SurgeryError
from surgery.engine.rules.base import PRODUCER, LayerRule, channel_vector, with_config
from surgery.engine.rules.registry import register_rule

_GATES = {"SimpleRNN": 1, "GRU": 3, "LSTM": 4}
_CANDIDATE = {"SimpleRNN": 0, "GRU": 2, "LSTM": 2}
_ZERO_AT_ZERO = ("tanh", "relu", "linear", "relu6", "elu", "selu", "swish", "silu", "gelu")


@register_rule(tuple(_GATES))
class RecurrentRule(LayerRule):
    flow = PRODUCER
    kernel_index = 0

    def _columns(self, info, units):
        u = int(info.config["units"])
        gates = _GATES[info.class_name]
        return np.concatenate([g * u + np.asarray(units, int) for g in range(gates)])

    def cut_outputs(self, info, channels):
        kernel, recurrent, *bias = info.weights
        cols = self._columns(info, channels)
        weights = [np.delete(kernel, cols, axis=-1),
                   np.delete(np.delete(recurrent, cols, axis=-1), channels, axis=0)]
        weights += [np.delete(b, cols, axis=-1) for b in bias]
        return with_config(info.config, units=int(info.config["units"]) - len(channels)), \
            weights

    def zero_outputs(self, info, channels):
        if info.config.get("activation", "tanh") not in _ZERO_AT_ZERO:
            raise SurgeryError(
                f"layer {info.describe()} uses activation {info.config.get('activation')!r}, "
                "which is not 0 at 0, so its units cannot be zeroed exactly.")
        u = int(info.config["units"])
        cols = _CANDIDATE[info.class_name] * u + np.asarray(channels, int)
        weights = [w.copy() for w in info.weights]
        for w in weights:
            w[..., cols] = 0
        return weights

    def cut_inputs(self, info, masks):
        keep = channel_vector(masks[0])
        if keep.all():
            return None
        kernel, *rest = info.weights
        return info.config, [kernel[keep], *rest]

    def filter_matrix(self, info):
        kernel, recurrent = info.weights[:2]
        u = int(info.config["units"])
        gates = _GATES[info.class_name]
        rows = [np.concatenate([kernel[:, g * u + j] for g in range(gates)] +
                               [recurrent[:, g * u + j] for g in range(gates)])
                for j in range(u)]
        return np.stack(rows)

    def flops(self, info) -> int:
        u = int(info.config["units"])
        steps = int(info.input_shape[0]) if len(info.input_shape) > 1 and \
            info.input_shape[0] else 1
        return 2 * _GATES[info.class_name] * u * (int(info.input_shape[-1]) + u) * steps
