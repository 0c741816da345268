"""Model-graph helpers of the criteria: which layers are producers and of what kind, their
kernels as ``(out_channels, fan)`` filter matrices, and walking the functional graph.

It owns the layer-kind tables (conv / transpose / separable / depthwise / dense, and the
BatchNormalization, dropout-like, activation and channel-keeping layers that chains may
pass through), :func:`_resolve_layers` (name checks shared by every criterion), the
node helpers (a layer's node in this model, its consumers, its input/output tensors),
:func:`_follow_chain` (the single-consumer walk used by ``apoz``, ``bn_gamma`` and
``thinet``) and the ReLU / identity tests on activations. It reads models only.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np

from surgery._backend import keras
from surgery.criteria._registry import logger

_L = keras.layers


def _classes(*names: str) -> tuple[type, ...]:
    """The ``keras.layers`` classes among ``names`` that exist in this Keras version."""
    return tuple(getattr(_L, n) for n in names if hasattr(_L, n))


_TRANSPOSE = _classes("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
_SEPARABLE = _classes("SeparableConv1D", "SeparableConv2D")
_DEPTHWISE = _classes("DepthwiseConv1D", "DepthwiseConv2D")
_CONV = _classes("Conv1D", "Conv2D", "Conv3D")
_DENSE = _classes("Dense")
_BN = _classes("BatchNormalization")
_IDENTITY_AT_INFERENCE = _classes(
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "Identity",
)
_ELEMENTWISE_ACT = _classes("ReLU", "Activation", "LeakyReLU", "PReLU", "ELU", "ThresholdedReLU")
_CHANNEL_KEEPING = _classes(
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
    "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
)
_RELU_NAMES = ("relu", "relu6")


def _producer_kind(layer: keras.layers.Layer) -> Optional[str]:
    if _TRANSPOSE and isinstance(layer, _TRANSPOSE):
        return "transpose"
    if _SEPARABLE and isinstance(layer, _SEPARABLE):
        return "separable"
    if _DEPTHWISE and isinstance(layer, _DEPTHWISE):
        return "depthwise"
    if isinstance(layer, _CONV + _DENSE):
        return "plain"
    return None


def _resolve_layers(model: keras.Model, names: Sequence[str]) -> list[keras.layers.Layer]:
    if isinstance(names, str):
        raise ValueError(f"layer_names must be a sequence of names, got the string {names!r}")
    by_name = {layer.name: layer for layer in model.layers}
    layers = []
    for name in names:
        if name not in by_name:
            raise ValueError(
                f"unknown layer {name!r}: model {model.name!r} has no top-level layer of that "
                "name (see model.summary(); layers of nested models must be named in them)"
            )
        layer = by_name[name]
        if _producer_kind(layer) is None:
            raise ValueError(
                f"layer {name!r} ({type(layer).__name__}) has no prunable output channels; "
                "criteria score Conv1D/2D/3D, Conv2DTranspose, SeparableConv2D, "
                "DepthwiseConv2D and Dense layers"
            )
        layers.append(layer)
    return layers


def _filter_matrix(layer: keras.layers.Layer) -> np.ndarray:
    """The layer's kernel as ``(out_channels, fan)``: one row per output channel."""
    kind = _producer_kind(layer)
    if kind == "separable":
        kernel = np.asarray(layer.pointwise_kernel.numpy())
        return np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1)
    if kind == "depthwise":
        kernel = np.asarray(layer.depthwise_kernel.numpy())  # (*k, in, depth_multiplier)
        flat = kernel.reshape(-1, kernel.shape[-2] * kernel.shape[-1])  # out = c * dm + m
        return flat.T
    kernel = np.asarray(layer.kernel.numpy())
    axis = -2 if kind == "transpose" else -1
    kernel = np.moveaxis(kernel, axis, 0)
    return kernel.reshape(kernel.shape[0], -1)


def _n_out_channels(layer: keras.layers.Layer) -> int:
    return int(_filter_matrix(layer).shape[0])


def _channel_axis(layer: keras.layers.Layer) -> int:
    return 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else -1


def _nodes_in_model(model: keras.Model, layer: keras.layers.Layer) -> list[Any]:
    keys = getattr(model, "_network_nodes", None)
    if keys is None:
        raise ValueError(
            f"model {model.name!r} ({type(model).__name__}) is not a functional or Sequential "
            "Keras model with a known graph; data-driven criteria need one"
        )
    return [
        node for i, node in enumerate(layer._inbound_nodes) if f"{layer.name}_ib-{i}" in keys
    ]


def _producer_node(model: keras.Model, layer: keras.layers.Layer) -> Any:
    nodes = _nodes_in_model(model, layer)
    if not nodes:
        raise ValueError(f"layer {layer.name!r} is not connected in model {model.name!r}")
    if len(nodes) > 1:
        logger.warning(
            "layer %r is called %d times in model %r; data-driven criteria use its first call",
            layer.name, len(nodes), model.name,
        )
    return nodes[0]


def _consumers(model: keras.Model, node: Any) -> list[tuple[keras.layers.Layer, Any]]:
    """(layer, node) pairs in ``model`` that take the output of ``node`` as an input."""
    out = []
    for nxt in node.layer._outbound_nodes:
        if any(p is node for p in nxt.parent_nodes) and any(
            n is nxt for n in _nodes_in_model(model, nxt.layer)
        ):
            out.append((nxt.layer, nxt))
    return out


def _node_output(node: Any) -> Any:
    outputs = node.outputs
    return outputs[0] if isinstance(outputs, (list, tuple)) else outputs


def _node_input(node: Any) -> Any:
    inputs = node.input_tensors
    return inputs[0] if isinstance(inputs, (list, tuple)) else inputs


def _follow_chain(
    model: keras.Model,
    node: Any,
    passthrough: Callable[[keras.layers.Layer], bool],
    target: Callable[[keras.layers.Layer], bool],
) -> Optional[tuple[keras.layers.Layer, Any]]:
    """Walk the single-consumer chain from ``node`` through ``passthrough`` layers to the
    first ``target`` layer; ``None`` when the chain forks, ends or hits anything else."""
    current = node
    for _ in range(len(model.layers) + 1):
        consumers = _consumers(model, current)
        if len(consumers) != 1:
            return None
        layer, nxt = consumers[0]
        if target(layer):
            return layer, nxt
        if not passthrough(layer):
            return None
        current = nxt
    return None


def _activation_name(fn: Any) -> str:
    try:
        name = keras.activations.serialize(fn)
    except Exception:  # noqa: BLE001  (custom callables)
        name = getattr(fn, "__name__", "")
    return name if isinstance(name, str) else ""


def _is_relu_like(layer: keras.layers.Layer) -> bool:
    """True for layers whose output is exactly zero wherever the input is not positive."""
    if isinstance(layer, _classes("ReLU")):
        slope = float(np.asarray(getattr(layer, "negative_slope", 0.0)))
        return slope == 0.0
    if isinstance(layer, _classes("Activation")):
        return _activation_name(layer.activation) in _RELU_NAMES
    return False


def _is_identity_like(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, _BN + _IDENTITY_AT_INFERENCE):
        return True
    if isinstance(layer, _classes("Activation")):
        return _activation_name(layer.activation) == "linear"
    return False
