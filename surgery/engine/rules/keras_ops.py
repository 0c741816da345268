"""Keras 3 operations that are not layers: ``x + y`` on symbolic tensors is a
``keras.src.ops.numpy.Add``, ``keras.ops.relu6(x)`` a ``Relu6``, ``ops.hard_swish`` a
``HardSilu``. The Keras 3 adapter describes such a call with ``op`` set to the operation's
class name; :func:`~surgery.engine.rules.rule_for` looks up ``"ops.<name>"`` first and
falls back to the layer rule of the same class name (``Add``, ``Multiply``, ``Subtract``,
``Maximum``, ``Minimum`` and ``Concatenate`` behave like the merge layers). One-tensor
element-wise operations (and a tensor with scalars) pass channels through; two tensors
couple their channels like a merge layer. Operations whose name matches a layer but which
do something else to the channel axis (``ops.average`` reduces, ``ops.reshape`` has a
fixed shape) block deletions. ``ops.transpose`` passes channels on while the channel axis
stays last, ``ops.pad`` while it pads only other axes with zeros (or reflects them).
"""
from __future__ import annotations

from surgery.engine.rules.base import BLOCKING, CHANNELWISE, MERGE, LayerRule
from surgery.engine.rules.registry import register_rule

#: element-wise activations and maths on one tensor (Keras 3 op class names)
UNARY_OPS = (
    "Relu", "Relu6", "Sigmoid", "Softplus", "Softsign", "SoftShrink", "SparsePlus", "Silu",
    "Squareplus", "LogSigmoid", "LeakyRelu", "HardSigmoid", "HardSilu", "Elu", "Selu",
    "Gelu", "Celu", "TanhShrink", "HardTanh", "HardShrink", "Threshold", "Tanh", "Abs",
    "Absolute", "Negative", "Square", "Sqrt", "Exp", "Clip", "Sign", "Round", "Floor",
    "Ceil", "Cast", "Erf", "Log1p", "Expm1",
)
#: element-wise operations of two tensors (or a tensor and a scalar) not named like a layer
BINARY_OPS = ("Divide", "TrueDivide", "Power")
_RELU_OPS = ("Relu", "Relu6")
#: named like a layer, but not the layer's channel behaviour
BLOCKING_OPS = ("Average", "Reshape", "Softmax")


def _op_keys(names) -> tuple:
    return tuple(f"ops.{n}" for n in names)


@register_rule(_op_keys(UNARY_OPS))
class ElementwiseOpRule(LayerRule):
    flow = CHANNELWISE

    def relu_like(self, info) -> bool:
        return info.op in _RELU_OPS

    def activation(self, info) -> str:
        return "relu" if info.op == "Relu" else ""


@register_rule(_op_keys(BINARY_OPS))
class BinaryOpRule(LayerRule):
    def flow_of(self, info) -> str:
        return MERGE if len(info.input_shapes) > 1 else CHANNELWISE


@register_rule(_op_keys(BLOCKING_OPS))
class BlockingOpRule(LayerRule):
    flow = BLOCKING

    def blocked(self, info) -> str:
        return f"Keras operation {info.describe()} does not keep the channel axis"


@register_rule("ops.Transpose")
class TransposeOpRule(LayerRule):
    """``ops.transpose(x, axes)``: ``axes`` counts the batch axis; ``None`` reverses all."""

    def flow_of(self, info) -> str:
        axes = info.config.get("axes")
        rank = len(info.input_shape) + 1
        return CHANNELWISE if axes is not None and list(axes)[-1] % rank == rank - 1 \
            else BLOCKING

    def blocked(self, info) -> str:
        return f"channel axis moved by Keras operation {info.describe()}"


@register_rule("ops.Pad")
class PadOpRule(LayerRule):
    """``ops.pad(x, pad_width, mode, constant_values)``: a zero channel stays zero when
    the channel axis is not padded and padding adds zeros or copies the channel."""

    def flow_of(self, info) -> str:
        widths = info.config.get("pad_width")
        last = tuple(int(w) for w in widths[-1]) if widths is not None else None
        constant = info.config.get("constant_values") or 0
        if last == (0, 0) and (info.config.get("mode", "constant") != "constant"
                               or constant == 0):
            return CHANNELWISE
        return BLOCKING

    def blocked(self, info) -> str:
        return (f"Keras operation {info.describe()} pads the channel axis or pads with a "
                "non-zero constant, so a deleted channel would not stay zero")
