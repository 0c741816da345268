"""Operations that are not layers: tf-keras wraps TensorFlow functions called on Keras
tensors in ``TFOpLambda`` (``x + y``, ``x * (1/6)``, ``tf.nn.relu6(x)``). Element-wise ops on
two tensors couple channels like the matching merge layer; on one tensor (and scalars)
they pass channels through, as hard-swish and scaled residuals need. Any other op blocks
deletions, because what it does to the channel axis is unknown."""
from __future__ import annotations

from surgery.engine.rules.base import BLOCKING, CHANNELWISE, MERGE, LayerRule
from surgery.engine.rules.registry import register_rule

ELEMENTWISE_OPS = {
    "__operators__.add", "math.add", "math.add_n", "math.subtract", "math.multiply",
    "math.truediv", "math.divide", "math.maximum", "math.minimum", "math.negative",
    "nn.relu", "nn.relu6", "nn.elu", "nn.selu", "nn.gelu", "nn.silu", "nn.swish",
    "nn.leaky_relu", "math.sigmoid", "nn.sigmoid", "math.tanh", "nn.tanh", "math.abs",
    "math.square", "math.exp", "math.softplus", "nn.softplus", "math.erf", "math.sqrt",
    "clip_by_value", "identity", "cast", "math.scalar_mul", "compat.v1.nn.relu",
    "__operators__.sub", "__operators__.mul", "__operators__.truediv",
}
_RELU_OPS = ("nn.relu", "nn.relu6", "compat.v1.nn.relu")


@register_rule("TFOpLambda")
class TFOpRule(LayerRule):
    def _op(self, info) -> str:
        return info.op or info.config.get("function", "")

    def flow_of(self, info) -> str:
        if self._op(info) not in ELEMENTWISE_OPS:
            return BLOCKING
        return MERGE if len(info.input_shapes) > 1 else CHANNELWISE

    def blocked(self, info) -> str:
        return f"TensorFlow op 'tf.{self._op(info)}' ({info.name}) is not known to be " \
               "element-wise"

    def relu_like(self, info) -> bool:
        return self._op(info) in _RELU_OPS
