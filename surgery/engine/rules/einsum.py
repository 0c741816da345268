"""``EinsumDense`` (Keras 3; tf-keras's ``keras.layers.experimental.EinsumDense``), read from
its equation ``"<input>,<kernel>-><output>"``: each letter names an axis. Kernel letters
that reach the output and not the input are the layer's own axes: the output's last one is
its channels (a producer, like ``Dense``'s ``units``), the others are head axes
(``"btd,dnh->btnh"``: ``n`` heads of width ``h``). Input letters the kernel contracts are
what it reads: deleting input channels deletes the kernel's entries along them, on every
contracted axis the deletion mask reaches (an output projection ``"btnh,nhd->btd"`` reads
whole heads and per-head widths). The bias (``bias_axes``) spans the output from its first
bias letter on, with size 1 on the other letters. Equations with an ellipsis are not
read: the layer blocks deletions.

>>> from surgery.engine.rules import LayerInfo, rule_for
>>> info = LayerInfo("EinsumDense", "q", {"equation": "btd,dnh->btnh",
...                  "output_shape": [None, 4, 8], "bias_axes": "nh"}, [(None, 16)],
...                  (None, 4, 8))
>>> rule = rule_for(info)
>>> rule.flow_of(info), rule.axes(info)
('producer', {'channels': 'h', 'heads': 'n', 'reads': 'd'})
"""
from __future__ import annotations

import re
from typing import Optional

import numpy as np

from surgery.errors import SurgeryError
from surgery.engine.rules.base import BLOCKING, MIXING, PRODUCER, LayerRule, concrete, with_config
from surgery.engine.rules.registry import register_rule

_EQUATION = re.compile(r"^([a-zA-Z]+),([a-zA-Z]+)->([a-zA-Z]+)$")


def parse(equation: str) -> Optional[tuple[str, str, str]]:
    """``(input, kernel, output)`` letters of an equation without an ellipsis."""
    match = _EQUATION.match(str(equation).replace(" ", ""))
    return match.groups() if match else None


def axis_keep(mask: np.ndarray, axis: int) -> np.ndarray:
    """Along ``axis`` of a full-shaped mask: True where any position keeps the entry."""
    moved = np.moveaxis(np.asarray(mask, bool), axis, 0)
    return moved.reshape(moved.shape[0], -1).any(axis=1)


@register_rule("EinsumDense")
class EinsumDenseRule(LayerRule):
    kernel_index = 0
    penalty = "kernel"

    def _spec(self, info):
        spec = parse(info.config.get("equation", ""))
        if spec is None:
            return None
        inp, ker, out = spec
        return inp, ker, out

    def axes(self, info) -> dict:
        """The letters of its own output channels, of its head axes, and that it reads
        (contracts) from its input."""
        inp, ker, out = self._spec(info)
        own = [c for c in out if c in ker and c not in inp]
        return dict(channels=own[-1] if own and own[-1] == out[-1] else "",
                    heads="".join(own[:-1] if own and own[-1] == out[-1] else own),
                    reads="".join(c for c in inp if c in ker and c not in out))

    def flow_of(self, info) -> str:
        if self._spec(info) is None:
            return BLOCKING
        return PRODUCER if self.axes(info)["channels"] else MIXING

    def blocked(self, info) -> str:
        return (f"{info.describe()} has an equation ({info.config.get('equation')}) with "
                "an ellipsis, which surgery does not read")

    def channels(self, info) -> int:
        inp, ker, out = self._spec(info)
        return int(info.weights[0].shape[ker.index(out[-1])])

    # ---- cutting one letter ------------------------------------------------------------
    def cut_axis(self, info, letter: str, keep: np.ndarray) -> tuple:
        """``(config, weights)`` keeping the entries ``keep`` (booleans) along one of its
        own output letters (channels or heads) or a contracted input letter."""
        inp, ker, out = self._spec(info)
        keep = np.asarray(keep, bool)
        weights = list(info.weights)
        weights[0] = np.compress(keep, weights[0], axis=ker.index(letter))
        config = info.config
        if letter in out:
            bias_axes = config.get("bias_axes") or ""
            if letter in bias_axes and len(weights) > 1:
                start = min(out.find(c) for c in bias_axes)
                weights[1] = np.compress(keep, weights[1], axis=out.index(letter) - start)
            shape = config["output_shape"]
            shape = list(shape) if isinstance(shape, (list, tuple)) else [shape]
            shape[out.index(letter) - 1] = int(keep.sum())
            config = with_config(config, output_shape=shape)
        return config, weights

    def cut_outputs(self, info, channels):
        keep = np.ones(self.channels(info), bool)
        keep[list(channels)] = False
        return self.cut_axis(info, self.axes(info)["channels"], keep)

    def zero_outputs(self, info, channels):
        inp, ker, out = self._spec(info)
        letter = out[-1]
        weights = [w.copy() for w in info.weights]
        np.moveaxis(weights[0], ker.index(letter), -1)[..., list(channels)] = 0
        bias_axes = info.config.get("bias_axes") or ""
        if letter in bias_axes and len(weights) > 1:
            weights[1][..., list(channels)] = 0  # the bias ends with the output's last letter
        return weights

    def cut_inputs(self, info, masks):
        inp, ker, out = self._spec(info)
        mask = np.broadcast_to(np.asarray(masks[0], bool), concrete(info.input_shape))
        current = info
        changed = False
        for letter in self.axes(info)["reads"]:
            axis = inp.index(letter) - 1  # the mask has no batch axis
            keep = axis_keep(mask, axis)
            if keep.all():
                continue
            current = current.replaced(*self.cut_axis(current, letter, keep))
            changed = True
        if not changed:
            return None
        kept = mask
        for letter in self.axes(info)["reads"]:
            axis = inp.index(letter) - 1
            kept = np.compress(axis_keep(mask, axis), kept, axis=axis)
        if not kept.all():
            raise SurgeryError(
                f"layer {info.describe()} reads a deletion that is not whole slices of its "
                f"contracted axes ({self.axes(info)['reads']}); delete whole channels or heads")
        return current.config, current.weights

    # ---- costs and criteria ------------------------------------------------------------
    def filter_matrix(self, info):
        inp, ker, out = self._spec(info)
        kernel = np.moveaxis(info.weights[0], ker.index(out[-1]), 0)
        return kernel.reshape(kernel.shape[0], -1)

    def flops(self, info) -> int:
        inp, ker, out = self._spec(info)
        sizes = dict(zip(inp[1:], concrete(info.input_shape)))
        sizes.update(zip(out[1:], concrete(info.output_shape)))
        shape = info.weights[0].shape if info.weights else ()
        sizes.update(zip(ker, shape))
        return 2 * int(np.prod([sizes.get(c, 1) for c in set(inp[1:] + ker + out[1:])]))
