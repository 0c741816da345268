"""``TFOpLambda``: TensorFlow functions called on Keras tensors (``x + y``, ``x * (1/6)``,
``tf.nn.relu6(x)``). Element-wise ops with two tensors behave like the matching merge layer;
with one tensor (and a scalar) they pass the deletion through. Any other op is refused,
because what it does to the channel axis is unknown."""
from __future__ import annotations

from surgery.errors import UnsupportedLayerError
from surgery.handlers.merge import merged_mask
from surgery.registry import register_handler

ELEMENTWISE_OPS = {
    "__operators__.add", "math.add", "math.add_n", "math.subtract", "math.multiply",
    "math.truediv", "math.divide", "math.maximum", "math.minimum", "math.negative",
    "nn.relu", "nn.relu6", "nn.elu", "nn.selu", "nn.gelu", "nn.silu", "nn.swish",
    "nn.leaky_relu", "math.sigmoid", "nn.sigmoid", "math.tanh", "nn.tanh", "math.abs",
    "math.square", "math.exp", "math.softplus", "nn.softplus", "math.erf", "math.sqrt",
    "clip_by_value", "identity", "cast", "math.scalar_mul", "compat.v1.nn.relu",
}


def is_elementwise(layer) -> bool:
    return getattr(layer, "symbol", None) in ELEMENTWISE_OPS


@register_handler("TFOpLambda")
def tf_op_lambda(layer, masks):
    if not is_elementwise(layer):
        raise UnsupportedLayerError(
            layer, f"TensorFlow op 'tf.{layer.symbol}' is not known to be element-wise")
    if isinstance(masks, (list, tuple)):
        return layer, merged_mask(layer, masks)
    return layer, masks
