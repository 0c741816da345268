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

The generic blocks' equivalents (BERT's ``TransformerEncoder``, GPT-2's
``TransformerDecoder``) live in :mod:`surgery.models.hub_transformer`; they are registered
here with the rest. ``surgery>SkippedBlock`` stands for a decoder block removed by depth
pruning (the identity on the residual stream; :mod:`surgery.engine.rules.depth`); a ViT
block that lost all its heads is built by ``surgery>ViTEncoder`` as an attention-free
block (its attention's output bias, then its MLP).

``import surgery`` registers :func:`register_lazily`'s proxies, which import keras-hub
(slow: about 10 s) only when a file that uses them is loaded.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import keras

from surgery.models.hub_transformer import (PACKAGE, replace_attention,  # noqa: F401
                                            transformer_decoder_class,
                                            transformer_encoder_class)
#: registered name -> attribute of this module that makes the class
_CLASSES = {"TransformerEncoder": "transformer_encoder_class",
            "TransformerDecoder": "transformer_decoder_class",
            "ViTEncoder": "vit_encoder_class",
            "ViTPatchingAndEmbedding": "vit_embedding_class",
            "LlamaTransformerDecoder": "llama_decoder_class",
            "Qwen3TransformerDecoder": "qwen3_decoder_class",
            "DeiTEncoder": "deit_encoder_class",
            "DeiTEmbeddings": "deit_embedding_class",
            "SkippedBlock": "skipped_block_class"}


class _BlockHeadWidths:
    """What the ViT and DeiT encoder blocks' equivalents share: a ``key_dim`` (read by the
    stock build) and a ``value_dim`` (``None``: the key width, as in the stock block; else
    the block's attention is rebuilt at both widths once built)."""

    def __init__(self, *args, key_dim: Optional[int] = None, value_dim: Optional[int] = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        if key_dim is not None:
            self.key_dim = int(key_dim)
        self.value_dim = None if value_dim is None else int(value_dim)

    def build(self, input_shape):
        super().build(input_shape)
        if self.value_dim is not None and self.value_dim != self.key_dim:
            replace_attention(self, "mha", input_shape, self.key_dim, self.value_dim)


class _PerBlockWidths:
    """What the ViT and DeiT encoder equivalents share: each block's ``num_heads``,
    ``key_dim``, ``value_dim`` (optional) and ``mlp_dim`` in their config (``blocks``;
    ``None``: all blocks as the stock config), and the built blocks swapped for ones at
    those widths (``_block``)."""

    def __init__(self, *args, blocks: Optional[list] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.blocks = [dict(b) for b in blocks] if blocks else None
        if self.blocks:
            self.num_layers = len(self.blocks)

    def build(self, input_shape):
        super().build(input_shape)
        for i, dims in enumerate(self.blocks or ()):  # each block at its own widths
            old = self.encoder_layers[i]
            new = self._block(dims, dict(
                num_heads=dims["num_heads"], key_dim=dims["key_dim"],
                value_dim=dims.get("value_dim"), hidden_dim=self.hidden_dim,
                dropout_rate=self.dropout_rate,
                use_mha_bias=self.use_mha_bias, attention_dropout=self.attention_dropout,
                layer_norm_epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy,
                name=old.name))
            new.build((None, None, self.hidden_dim))
            self._tracker.replace_tracked_value("layers", old, new)
            list.__setitem__(self.encoder_layers, i, new)


@functools.lru_cache(maxsize=None)
def vit_encoder_class():
    """keras-hub's ``ViTEncoder`` whose config may list each block's ``num_heads``,
    ``key_dim``, ``value_dim`` and ``mlp_dim`` (``blocks``; ``None``: all blocks as the
    stock config)."""
    from keras_hub.src.models.vit.vit_layers import ViTEncoder as Stock  # lazy: slow import
    from keras_hub.src.models.vit.vit_layers import ViTEncoderBlock as StockBlock

    class ViTEncoderBlock(_BlockHeadWidths, StockBlock):
        pass

    @keras.saving.register_keras_serializable(package=PACKAGE, name="ViTEncoder")
    class ViTEncoder(_PerBlockWidths, Stock):
        def _block(self, dims, common):
            if not dims["num_heads"]:
                return attention_free_block_class()(
                    hidden_dim=self.hidden_dim, mlp_dim=dims["mlp_dim"],
                    use_mha_bias=self.use_mha_bias, use_mlp_bias=self.use_mlp_bias,
                    dropout_rate=self.dropout_rate,
                    layer_norm_epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy,
                    name=common["name"])
            return ViTEncoderBlock(mlp_dim=dims["mlp_dim"], use_mlp_bias=self.use_mlp_bias,
                                   **common)

        def get_config(self):
            return dict(super().get_config(), blocks=self.blocks)

    return ViTEncoder


@functools.lru_cache(maxsize=None)
def attention_free_block_class():
    """A ViT block whose heads all went: with no head, its attention adds only its output
    bias to the residual stream (``x + b``; ``x`` without biases), then the block's MLP as
    the stock block (``ln_2``, ``mlp``). Weights: that bias (with ``use_mha_bias``), then
    ``ln_2`` and the MLP's. Built by ``surgery>ViTEncoder`` for a block with
    ``num_heads=0``, never on its own."""
    from keras_hub.src.models.vit.vit_layers import MLP  # lazy: slow import

    class AttentionFreeBlock(keras.layers.Layer):
        def __init__(self, hidden_dim, mlp_dim, use_mha_bias=True, use_mlp_bias=True,
                     dropout_rate=0.0, layer_norm_epsilon=1e-6, **kwargs):
            super().__init__(**kwargs)
            self.hidden_dim, self.mlp_dim = int(hidden_dim), int(mlp_dim)
            self.use_mha_bias, self.use_mlp_bias = use_mha_bias, use_mlp_bias
            self.dropout_rate, self.layer_norm_epsilon = dropout_rate, layer_norm_epsilon

        def build(self, input_shape):
            self.attention_bias = self.add_weight(
                shape=(self.hidden_dim,), initializer="zeros",
                name="attention_bias") if self.use_mha_bias else None
            self.layer_norm_2 = keras.layers.LayerNormalization(
                epsilon=self.layer_norm_epsilon, name="ln_2", dtype=self.dtype_policy)
            self.layer_norm_2.build((None, None, self.hidden_dim))
            self.mlp = MLP(hidden_dim=self.hidden_dim, mlp_dim=self.mlp_dim,
                           use_bias=self.use_mlp_bias, dropout_rate=self.dropout_rate,
                           name="mlp", dtype=self.dtype_policy)
            self.mlp.build((None, None, self.hidden_dim))
            self.built = True

        def call(self, inputs):
            x = inputs if self.attention_bias is None else inputs + self.attention_bias
            return x + self.mlp(self.layer_norm_2(x))

    return AttentionFreeBlock


@functools.lru_cache(maxsize=None)
def vit_embedding_class():
    """keras-hub's ``ViTPatchingAndEmbedding``, whose stock ``get_config`` writes two
    derived keys (``num_patches``, ``num_positions``) its ``__init__`` rejects: a copy made
    from its config (``clone_model``, a saved functional model) fails. This one accepts and
    recomputes them."""
    # lazy: keras-hub takes about 10 s to import
    from keras_hub.src.models.vit.vit_layers import ViTPatchingAndEmbedding as Stock

    @keras.saving.register_keras_serializable(package=PACKAGE,
                                              name="ViTPatchingAndEmbedding")
    class ViTPatchingAndEmbedding(Stock):
        def __init__(self, *args, num_patches=None, num_positions=None, **kwargs):
            super().__init__(*args, **kwargs)

    return ViTPatchingAndEmbedding


def _replace_sublayer(block, attribute: str, build_shape, **changes) -> None:
    """Swap a built sublayer for one from its config with ``changes``, in its place."""
    old = getattr(block, attribute)
    new = type(old).from_config({**old.get_config(), **changes})
    new.build(build_shape)
    block._tracker.replace_tracked_value("layers", old, new)
    object.__setattr__(block, attribute, new)


class _ConfigOfAttributes:
    """An equivalent whose stock ``get_config`` raises or leaves out what its constructor
    needs: its config is read from its attributes (its ``config_of``)."""

    def get_config(self):
        return self.config_of(self)


def _layer_config(layer) -> dict:
    """What every layer's config holds: its name, trainability and dtype policy."""
    return dict(name=layer.name, trainable=layer.trainable,
                dtype=keras.dtype_policies.serialize(layer.dtype_policy))


def _decoder_config(layer, **more) -> dict:
    """What a Llama-style decoder block's config holds, read from its attributes, and
    ``more``."""
    return dict(
        _layer_config(layer),
        intermediate_dim=layer.intermediate_dim, num_query_heads=layer.num_query_heads,
        num_key_value_heads=layer.num_key_value_heads,
        rope_max_wavelength=layer.rope_max_wavelength,
        activation=keras.activations.serialize(layer.activation),
        layer_norm_epsilon=layer.layer_norm_epsilon,
        kernel_initializer=keras.initializers.serialize(layer.kernel_initializer),
        dropout=layer.dropout, **more)


@functools.lru_cache(maxsize=None)
def llama_decoder_class():
    """keras-hub's ``LlamaTransformerDecoder`` with ``head_dim`` in its config, and a
    ``get_config`` that works: 0.32.0's reads an attribute the layer never sets
    (``rope_scaling_factor``) and raises, so a Llama block cannot be cloned or saved
    in a functional model at all."""
    # lazy: keras-hub takes about 10 s to import
    from keras_hub.src.models.llama.llama_decoder import LlamaTransformerDecoder as Stock

    @keras.saving.register_keras_serializable(package=PACKAGE,
                                              name="LlamaTransformerDecoder")
    class LlamaTransformerDecoder(_ConfigOfAttributes, Stock):
        def __init__(self, *args, head_dim: Optional[int] = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.head_dim = head_dim

        @staticmethod
        def config_of(layer) -> dict:
            """The config of a stock or surgery Llama block, read from its attributes."""
            return _decoder_config(
                layer, rope_position_scaling_factor=layer.rope_position_scaling_factor,
                rope_frequency_adjustment_factor=layer.rope_frequency_adjustment_factor,
                rope_low_freq_factor=layer.rope_low_freq_factor,
                rope_high_freq_factor=layer.rope_high_freq_factor,
                rope_pretraining_sequence_length=layer.rope_pretraining_sequence_length,
                head_dim=getattr(layer, "head_dim", None))

        def build(self, decoder_sequence_shape):
            super().build(decoder_sequence_shape)
            heads, kv, size = self.num_query_heads, self.num_key_value_heads, self.head_dim
            if not size or size == decoder_sequence_shape[-1] // heads:
                return
            attention = self._self_attention_layer
            for attribute, n in (("_query_dense", heads), ("_key_dense", kv),
                                 ("_value_dense", kv)):
                _replace_sublayer(attention, attribute, decoder_sequence_shape,
                                  output_shape=(None, n, size))
            _replace_sublayer(attention, "_output_dense", (None, None, heads, size))
            attention._inv_norm_factor = 1.0 / math.sqrt(size)

    return LlamaTransformerDecoder


@functools.lru_cache(maxsize=None)
def qwen3_decoder_class():
    """keras-hub's ``Qwen3TransformerDecoder`` with a ``get_config`` that rebuilds it: the
    stock one leaves out ``head_dim`` (and ``sliding_window_size``), which the constructor
    needs, so a Qwen3 block cannot be cloned or saved in a functional model."""
    # lazy: keras-hub takes about 10 s to import
    from keras_hub.src.models.qwen3.qwen3_decoder import Qwen3TransformerDecoder as Stock

    @keras.saving.register_keras_serializable(package=PACKAGE,
                                              name="Qwen3TransformerDecoder")
    class Qwen3TransformerDecoder(_ConfigOfAttributes, Stock):
        @staticmethod
        def config_of(layer) -> dict:
            """The config of a stock or surgery Qwen3 block, read from its attributes."""
            return _decoder_config(layer, head_dim=layer.head_dim,
                                   rope_scaling_factor=layer.rope_scaling_factor,
                                   sliding_window_size=layer.sliding_window_size)

    return Qwen3TransformerDecoder


@functools.lru_cache(maxsize=None)
def deit_embedding_class():
    """keras-hub's ``DeiTEmbeddings``, whose stock ``get_config`` writes two derived keys
    (``num_patches``, ``num_positions``) its ``__init__`` rejects, as ViT's does."""
    from keras_hub.src.models.deit.deit_layers import DeiTEmbeddings as Stock  # lazy: slow

    @keras.saving.register_keras_serializable(package=PACKAGE, name="DeiTEmbeddings")
    class DeiTEmbeddings(Stock):
        def __init__(self, *args, num_patches=None, num_positions=None, **kwargs):
            super().__init__(*args, **kwargs)

    return DeiTEmbeddings


@functools.lru_cache(maxsize=None)
def deit_encoder_class():
    """keras-hub's ``DeiTEncoder`` with a ``get_config`` that works (the stock one reads a
    ``key_dim`` the encoder never sets, so a DeiT cannot be cloned) and, as
    :func:`vit_encoder_class`, each block's ``num_heads``, ``key_dim`` and ``mlp_dim`` in
    its config (``blocks``)."""
    from keras_hub.src.models.deit import deit_layers  # lazy: keras-hub takes 10 s

    class DeiTEncoderBlock(_BlockHeadWidths, deit_layers.DeiTEncoderBlock):
        pass

    @keras.saving.register_keras_serializable(package=PACKAGE, name="DeiTEncoder")
    class DeiTEncoder(_PerBlockWidths, _ConfigOfAttributes, deit_layers.DeiTEncoder):
        def _block(self, dims, common):
            return DeiTEncoderBlock(intermediate_dim=dims["mlp_dim"], **common)

        @staticmethod
        def config_of(layer) -> dict:
            """The config of a stock or surgery DeiT encoder, read from its attributes."""
            return dict(
                _layer_config(layer), num_layers=layer.num_layers, num_heads=layer.num_heads,
                hidden_dim=layer.hidden_dim, intermediate_dim=layer.intermediate_dim,
                use_mha_bias=layer.use_mha_bias, dropout_rate=layer.dropout_rate,
                attention_dropout=layer.attention_dropout,
                layer_norm_epsilon=layer.layer_norm_epsilon,
                blocks=getattr(layer, "blocks", None))

    return DeiTEncoder


@functools.lru_cache(maxsize=None)
def skipped_block_class():
    """``surgery>SkippedBlock``: a residual block removed by depth pruning (a decoder block
    of a keras-hub language model), which passes the residual stream on unchanged; called
    with a key/value cache (``generate``), it returns the cache as it got it."""

    @keras.saving.register_keras_serializable(package=PACKAGE, name="SkippedBlock")
    class SkippedBlock(keras.layers.Layer):
        def __init__(self, skipped: str = "", **kwargs):
            super().__init__(**kwargs)
            self.skipped = skipped  # the class of the block it stands for
            self.supports_masking = True

        # each argument the blocks it stands for take, by name: Keras refuses a **kwargs
        # that mixes tensors and plain values (Gemma 3's cache_update_index=0 and masks)
        def call(self, inputs, decoder_padding_mask=None, decoder_attention_mask=None,
                 self_attention_cache=None, self_attention_cache_update_index=None,
                 padding_mask=None, vision_mask=None, cache=None, cache_update_index=None,
                 cache_update_mask=None, use_causal_mask=None, training=None):
            kept = self_attention_cache if self_attention_cache is not None else cache
            return inputs if kept is None else (inputs, kept)

        def compute_output_shape(self, input_shape, *args, **kwargs):
            return input_shape

        def get_config(self):
            return dict(super().get_config(), skipped=self.skipped)

    return SkippedBlock


class _Lazy:
    """Stands in the registry for a class until a file needs it."""

    def __init__(self, factory: str):
        self.factory = factory

    def from_config(self, config):
        return globals()[self.factory]().from_config(config)

    def config_of(self, layer) -> Optional[dict]:
        if not type(layer).__module__.startswith(("keras_hub", "surgery.models.")):
            return None  # another library's class of the same name: not keras-hub's fix
        cls = globals()[self.factory]()
        return cls.config_of(layer) if hasattr(cls, "config_of") else None


def register_lazily() -> None:
    """Put proxies for the classes here in Keras's registry (no keras-hub import)."""
    objects = keras.saving.get_custom_objects()
    for name, factory in _CLASSES.items():
        objects.setdefault(f"{PACKAGE}>{name}", _Lazy(factory))


def registered_name(name: str) -> str:
    return f"{PACKAGE}>{name}"
