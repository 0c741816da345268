"""``Embedding``: a table ``(input_dim, output_dim)`` looked up by integer ids. It reads
no input channels (token ids have none) and produces ``output_dim`` channels, one column
of the table each; a channel is zeroed by zeroing its column.

``ReversibleEmbedding`` (Keras 3 and keras-hub: every keras-hub language model's token
embedding) is also called in reverse on the last hidden states, ``logits = h @ table.T``
(or ``h @ reverse_embeddings`` when ``tie_weights=False``): that call reads the same
channels the forward call makes, through the same columns, so a deleted hidden channel
leaves both calls with one column (and one row of ``reverse_embeddings``) fewer, and the
vocabulary it produces is never cut."""
from __future__ import annotations

import numpy as np

from surgery.engine.rules.base import (
    MIXING, PRODUCER, LayerRule, channel_vector, concrete, with_config, zeroed,
)
from surgery.engine.rules.registry import register_rule


@register_rule("Embedding")
class EmbeddingRule(LayerRule):
    flow = PRODUCER
    kernel_index = 0

    def channels(self, info) -> int:
        return int(info.config["output_dim"])

    def cut_outputs(self, info, channels):
        table = np.delete(info.weights[0], channels, axis=-1)
        return with_config(info.config, output_dim=self.channels(info) - len(channels)), \
            [table]

    def zero_outputs(self, info, channels):
        return zeroed(info.weights, channels)

    def filter_matrix(self, info):
        return info.weights[0].T


@register_rule("ReversibleEmbedding")
class ReversibleEmbeddingRule(EmbeddingRule):

    @staticmethod
    def _reverse(info) -> bool:
        """The reverse call reads hidden states ``(..., D)``; the forward call, ids."""
        return len(info.input_shape) == len(info.output_shape)

    def flow_of(self, info) -> str:
        return MIXING if self._reverse(info) else PRODUCER

    def reads_inputs(self, info) -> bool:
        return self._reverse(info)

    def _without(self, info, channels) -> tuple:
        weights = list(info.weights)
        weights[0] = np.delete(weights[0], channels, axis=-1)
        if not info.config.get("tie_weights", True) and len(weights) > 1:
            weights[1] = np.delete(weights[1], channels, axis=0)
        return with_config(info.config, output_dim=int(weights[0].shape[-1])), weights

    def cut_outputs(self, info, channels):
        return self._without(info, list(channels))

    def cut_inputs(self, info, masks):
        keep = channel_vector(masks[0])
        return None if keep.all() else self._without(info, np.flatnonzero(~keep))

    def zero_outputs(self, info, channels):
        weights = zeroed(info.weights[:1], channels) + [w.copy() for w in info.weights[1:]]
        if not info.config.get("tie_weights", True) and len(weights) > 1:
            weights[1][channels] = 0
        return weights

    def flops(self, info) -> int:
        if not self._reverse(info):
            return 0
        positions = int(np.prod(concrete(info.input_shape[:-1])))
        vocabulary, built = info.weights[0].shape
        return 2 * positions * int(vocabulary) * int(info.input_shape[-1] or built)
