"""NumPy forms of the functions keras-hub's blocks apply, for the NumPy passes that score
units by their activations (:mod:`surgery.engine.rules.composite`,
:mod:`surgery.engine.rules.vit`, :mod:`surgery.engine.rules.decoder_forward`).
"""
from __future__ import annotations

import math

import numpy as np


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    """LayerNormalization over the last axis."""
    centred = x - x.mean(axis=-1, keepdims=True)
    return centred / np.sqrt(np.square(centred).mean(axis=-1, keepdims=True) + eps) * gamma \
        + beta


def gelu(x: np.ndarray) -> np.ndarray:
    """The exact GELU keras-hub's encoders use, with ``erf`` to 1.5e-7 (Abramowitz and
    Stegun 7.1.26): activation scores need no more."""
    z = np.abs(x) / np.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 +
                                                                         t * 1.061405429))))
    erf = np.sign(x) * (1.0 - poly * np.exp(-z * z))
    return 0.5 * x * (1.0 + erf)


def silu(x: np.ndarray) -> np.ndarray:
    """SiLU (swish): the gate of Llama's, Mistral's and Qwen3's feed-forward."""
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU in its tanh form (Gemma 3's gate, keras-hub's ``gelu_approximate``)."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
