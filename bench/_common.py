"""What the benchmarks share: counting non-zero parameters and matching tfmot to them.

The comparison the benchmarks make is channel pruning against tfmot's unstructured
magnitude pruning *at the same parameter count*: the tfmot model keeps as many non-zero
parameters as the channel-pruned model has parameters. tfmot only zeroes the kernels of the
layers it can prune (Conv2D and Dense, not biases, BatchNormalization or DepthwiseConv2D),
so the sparsity it is given is what those kernels must lose for that to hold.
"""
from __future__ import annotations

import numpy as np

from surgery import keras
from surgery.pipeline import sparsity


def nonzero_params(model: keras.Model) -> int:
    """Weights of ``model`` (trainable or not) that are not exactly zero."""
    return int(sum(np.count_nonzero(w) for w in model.get_weights()))


def tfmot_sparsity_for(model: keras.Model, nonzero: int) -> float:
    """The tfmot target sparsity that leaves ``model`` with ``nonzero`` non-zero weights.

    Raises ``ValueError`` when tfmot's prunable kernels are too small to get there.
    """
    prunable = sum(int(np.prod(kernel.shape))
                   for name, kernel in sparsity.prunable_kernels(model).items()
                   if sparsity.tfmot_prunable(model.get_layer(name)))
    target = (nonzero_params(model) - nonzero) / prunable
    if not 0 < target < 1:
        raise ValueError(f"tfmot cannot leave {model.name} with {nonzero} non-zero weights: "
                         f"its prunable kernels would need sparsity {target:.3f}")
    return target
