"""Registered equivalents of keras-hub blocks whose pruned widths their stock config
cannot express (Keras 3 only).

keras-hub derives a block's head size from its input (``key_dim = hidden_dim //
num_heads``), so a block that lost heads (or head widths) cannot be rebuilt from its
stock config: the head size would grow. Each class here is the stock class with its
config *extended* by the head widths (``key_dim``, ``value_dim``; ``None`` = derived as
before): it computes exactly what the stock block computes, saves as ``.keras`` under the
name ``surgery>ClassName``, and loads in any process that ran ``import surgery``. The
subclass, rather than a config key the stock class would reject, is the only way a saved
file stays loadable: keras-hub's ``from_config`` passes every key to ``__init__``.

``import surgery`` registers :func:`register_lazily`'s proxies, which import keras-hub
(slow: about 10 s) only when a file that uses them is loaded.
"""
from __future__ import annotations

import functools
from typing import Optional

import keras

PACKAGE = "surgery"
#: registered name -> attribute of this module that makes the class
_CLASSES = {"TransformerEncoder": "transformer_encoder_class",
            "ViTEncoder": "vit_encoder_class",
            "ViTPatchingAndEmbedding": "vit_embedding_class"}


def _replace_attention(block, attribute: str, inputs_shape, key_dim, value_dim) -> None:
    """Swap a built block's MultiHeadAttention for one with the given head widths,
    keeping its place among the block's layers (weights keep their order and paths)."""
    old = getattr(block, attribute)
    config = old.get_config()
    config.update(key_dim=int(key_dim), value_dim=int(value_dim or key_dim))
    new = keras.layers.MultiHeadAttention.from_config(config)
    new.build(query_shape=inputs_shape, value_shape=inputs_shape)
    block._tracker.replace_tracked_value("layers", old, new)
    object.__setattr__(block, attribute, new)


@functools.lru_cache(maxsize=None)
def transformer_encoder_class():
    """``keras_hub.layers.TransformerEncoder`` with ``key_dim`` / ``value_dim`` in its
    config."""
    from keras_hub.layers import TransformerEncoder as Stock

    @keras.saving.register_keras_serializable(package=PACKAGE, name="TransformerEncoder")
    class TransformerEncoder(Stock):
        def __init__(self, *args, key_dim: Optional[int] = None,
                     value_dim: Optional[int] = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.key_dim, self.value_dim = key_dim, value_dim

        def build(self, inputs_shape):
            super().build(inputs_shape)
            if self.key_dim is not None:
                _replace_attention(self, "_self_attention_layer", inputs_shape,
                                   self.key_dim, self.value_dim)

        def get_config(self):
            return dict(super().get_config(), key_dim=self.key_dim,
                        value_dim=self.value_dim)

    return TransformerEncoder


@functools.lru_cache(maxsize=None)
def vit_encoder_class():
    """keras-hub's ``ViTEncoder`` whose config may list each block's ``num_heads``,
    ``key_dim`` and ``mlp_dim`` (``blocks``; ``None``: all blocks as the stock config)."""
    from keras_hub.src.models.vit.vit_layers import ViTEncoder as Stock
    from keras_hub.src.models.vit.vit_layers import ViTEncoderBlock as StockBlock

    class ViTEncoderBlock(StockBlock):
        def __init__(self, *args, key_dim: Optional[int] = None, **kwargs):
            super().__init__(*args, **kwargs)
            if key_dim is not None:
                self.key_dim = int(key_dim)  # read by the stock build

    @keras.saving.register_keras_serializable(package=PACKAGE, name="ViTEncoder")
    class ViTEncoder(Stock):
        def __init__(self, *args, blocks: Optional[list] = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.blocks = [dict(b) for b in blocks] if blocks else None
            if self.blocks:
                self.num_layers = len(self.blocks)

        def build(self, input_shape):
            super().build(input_shape)
            if not self.blocks:
                return
            for i, dims in enumerate(self.blocks):  # each block at its own widths
                old = self.encoder_layers[i]
                new = ViTEncoderBlock(
                    num_heads=dims["num_heads"], key_dim=dims["key_dim"],
                    hidden_dim=self.hidden_dim, mlp_dim=dims["mlp_dim"],
                    dropout_rate=self.dropout_rate, use_mha_bias=self.use_mha_bias,
                    use_mlp_bias=self.use_mlp_bias, attention_dropout=self.attention_dropout,
                    layer_norm_epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy,
                    name=old.name)
                new.build((None, None, self.hidden_dim))
                self._tracker.replace_tracked_value("layers", old, new)
                list.__setitem__(self.encoder_layers, i, new)

        def get_config(self):
            return dict(super().get_config(), blocks=self.blocks)

    return ViTEncoder


@functools.lru_cache(maxsize=None)
def vit_embedding_class():
    """keras-hub's ``ViTPatchingAndEmbedding``, whose stock ``get_config`` writes two
    derived keys (``num_patches``, ``num_positions``) its ``__init__`` rejects: a copy made
    from its config (``clone_model``, a saved functional model) fails. This one accepts and
    recomputes them."""
    from keras_hub.src.models.vit.vit_layers import ViTPatchingAndEmbedding as Stock

    @keras.saving.register_keras_serializable(package=PACKAGE,
                                              name="ViTPatchingAndEmbedding")
    class ViTPatchingAndEmbedding(Stock):
        def __init__(self, *args, num_patches=None, num_positions=None, **kwargs):
            super().__init__(*args, **kwargs)

    return ViTPatchingAndEmbedding


class _Lazy:
    """Stands in the registry for a class until a file needs it."""

    def __init__(self, factory: str):
        self.factory = factory

    def from_config(self, config):
        return globals()[self.factory]().from_config(config)


def register_lazily() -> None:
    """Put proxies for the classes here in Keras's registry (no keras-hub import)."""
    objects = keras.saving.get_custom_objects()
    for name, factory in _CLASSES.items():
        objects.setdefault(f"{PACKAGE}>{name}", _Lazy(factory))


def registered_name(name: str) -> str:
    return f"{PACKAGE}>{name}"
