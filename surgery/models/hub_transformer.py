"""Registered equivalents of keras-hub's generic transformer blocks (Keras 3 only).

This module owns ``surgery>TransformerEncoder`` (BERT's block) and
``surgery>TransformerDecoder`` (GPT-2's): keras-hub's ``TransformerEncoder`` and
``TransformerDecoder`` with the head widths ``key_dim`` / ``value_dim`` in their config,
their self-attention rebuilt at those widths once built (see
:mod:`surgery.models.hub_blocks` for why a cut block needs a registered equivalent).

The decoder also takes part in generation after a cut. keras-hub's ``GPT2CausalLM``
caches keys and values in one tensor for every block, ``num_heads`` heads of width
``hidden_dim // num_heads`` each: a block that lost heads or head widths would not fit
it. The equivalent reads the part of the cache its heads use, and hands the whole cache
back with that part updated and the rest zero, so a cut GPT-2 generates as the uncut one
does. Keys and values share that cache, so a block whose key and value widths differ
cannot use it (its ``fits_cache`` says so; the cut model then logs that it cannot
generate: :mod:`surgery.engine.hub_models`).
"""
from __future__ import annotations

import functools
from typing import Optional

import keras

PACKAGE = "surgery"


def replace_attention(block, attribute: str, inputs_shape, key_dim, value_dim) -> None:
    """Swap a built block's MultiHeadAttention for one with the given head widths,
    keeping its place among the block's layers (weights keep their order and paths)."""
    old = getattr(block, attribute)
    config = old.get_config()
    config.update(key_dim=int(key_dim), value_dim=int(value_dim or key_dim))
    new = type(old).from_config(config)  # MultiHeadAttention, or keras-hub's cached one
    new.build(query_shape=inputs_shape, value_shape=inputs_shape)
    block._tracker.replace_tracked_value("layers", old, new)
    object.__setattr__(block, attribute, new)


class _HeadWidths:
    """What keras-hub's TransformerEncoder and TransformerDecoder equivalents share: the
    head widths ``key_dim`` / ``value_dim`` in their config, and their self-attention
    rebuilt at those widths once built."""

    def _resize_attention(self, inputs_shape) -> None:
        if self.key_dim is not None:
            replace_attention(self, "_self_attention_layer", inputs_shape, self.key_dim,
                              self.value_dim)

    def get_config(self):
        return dict(super().get_config(), key_dim=self.key_dim, value_dim=self.value_dim)


@functools.lru_cache(maxsize=None)
def transformer_encoder_class():
    """``keras_hub.layers.TransformerEncoder`` with ``key_dim`` / ``value_dim`` in its
    config."""
    from keras_hub.layers import TransformerEncoder as Stock  # lazy: keras-hub takes 10 s

    @keras.saving.register_keras_serializable(package=PACKAGE, name="TransformerEncoder")
    class TransformerEncoder(_HeadWidths, Stock):
        def __init__(self, *args, key_dim: Optional[int] = None,
                     value_dim: Optional[int] = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.key_dim, self.value_dim = key_dim, value_dim

        def build(self, inputs_shape):
            super().build(inputs_shape)
            self._resize_attention(inputs_shape)

    return TransformerEncoder


@functools.lru_cache(maxsize=None)
def transformer_decoder_class():
    """``keras_hub.layers.TransformerDecoder`` (GPT-2's block) with ``key_dim`` /
    ``value_dim`` in its config, generating through a wider cache (module docstring)."""
    from keras_hub.layers import TransformerDecoder as Stock  # lazy: keras-hub takes 10 s

    @keras.saving.register_keras_serializable(package=PACKAGE, name="TransformerDecoder")
    class TransformerDecoder(_HeadWidths, Stock):
        def __init__(self, *args, key_dim: Optional[int] = None,
                     value_dim: Optional[int] = None, decoder_sequence_shape=None,
                     encoder_sequence_shape=None, **kwargs):
            super().__init__(*args, **kwargs)  # the stock one builds when given shapes
            self.key_dim, self.value_dim = key_dim, value_dim
            if decoder_sequence_shape:  # ... so build here, with the head widths known
                self.build(decoder_sequence_shape, encoder_sequence_shape)

        def build(self, decoder_sequence_shape, encoder_sequence_shape=None):
            super().build(decoder_sequence_shape, encoder_sequence_shape)
            self._resize_attention(decoder_sequence_shape)

        def fits_cache(self, heads: int, width: int) -> bool:
            """Whether this block generates through a cache of ``heads`` heads of
            ``width`` (keys and values): no more heads, key and value widths equal and
            no wider."""
            attention = self._self_attention_layer
            value = attention.value_dim or attention.key_dim
            return attention.key_dim == value and attention.num_heads <= heads and \
                attention.key_dim <= width

        def call(self, decoder_sequence, *args, self_attention_cache=None, **kwargs):
            whole = self_attention_cache  # (batch, 2, length, heads, width)
            attention = self._self_attention_layer
            heads, width = int(attention.num_heads), int(attention.key_dim)
            if whole is None or tuple(whole.shape[-2:]) == (heads, width):
                return super().call(decoder_sequence, *args,
                                    self_attention_cache=whole, **kwargs)
            outputs = super().call(decoder_sequence, *args,
                                   self_attention_cache=whole[..., :heads, :width], **kwargs)
            more = [[0, 0]] * 3 + [[0, whole.shape[-2] - heads], [0, whole.shape[-1] - width]]
            return (outputs[0], keras.ops.pad(outputs[1], more), *outputs[2:])

    return TransformerDecoder
