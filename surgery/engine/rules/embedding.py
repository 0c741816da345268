"""``Embedding``: a table ``(input_dim, output_dim)`` looked up by integer ids. It reads
no input channels (token ids have none) and produces ``output_dim`` channels, one column
of the table each; a channel is zeroed by zeroing its column."""
from __future__ import annotations

import numpy as np

from surgery.engine.rules.base import PRODUCER, LayerRule, with_config, zeroed
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
