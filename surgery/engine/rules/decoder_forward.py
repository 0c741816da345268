"""A NumPy pass through one keras-hub transformer block, for the ``activation`` criterion.

This module owns what :class:`~surgery.engine.rules.decoders.LlamaDecoderRule` and its
subclasses need to score their units from data: :func:`decoder_forward` runs a block's
weights (by role) on the block call's captured inputs and returns every query head's
attention context (before the output projection), every feed-forward unit's gated
activation and the block's output (the residual stream after it, which the tests hold
against the Keras block), plus which positions count (:func:`position_mean`). It follows
keras-hub 0.32's arithmetic family by family: RMS norms (Gemma's scale ``1 + gamma``),
rotary embeddings (Llama 3's frequency adjustment; ``RotaryEmbedding``'s linear position
scaling for the others; Llama's rotary layer ignores ``rope_position_scaling_factor``),
Qwen3's and Gemma 3's query/key norms (fixed epsilons: the blocks do not pass theirs on),
Gemma 3's logit soft-capping and post-branch norms, and the attention masks: causal, the
padding mask over keys, sliding windows (Mistral, Qwen3, Gemma 3), Gemma 3's vision
tokens and bidirectional mode. A query with no key to attend to gets a zero context, as
Keras's masked ``Softmax`` gives it. Computed in float64 on the non-fused path (the
TensorFlow backend's; JAX's fused attention skips Qwen3's sliding window).
:func:`transformer_forward` does the same for keras-hub's generic blocks, BERT's
``TransformerEncoder`` and GPT-2's ``TransformerDecoder`` (LayerNorms before or after
each branch, GELU exact or in its tanh form).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np

from surgery.engine.rules.numerics import gelu, gelu_tanh, layer_norm, silu

#: the RMS-norm epsilon of Qwen3's query/key norms and of Gemma 3's (their blocks keep
#: their own ``layer_norm_epsilon`` for the block's norms only)
_HEAD_NORM_EPSILON = {"qwen3": 1e-5, "gemma3": 1e-6}
#: attention scores held at once (float64): a long sequence is scored a few examples at a time
_CHUNK = 1 << 23


class DecoderPass(NamedTuple):
    """What :func:`decoder_forward` computes, per example and position."""

    contexts: np.ndarray   # (batch, positions, heads, head_dim)
    hidden: np.ndarray     # (batch, positions, intermediate_dim): act(gate) * up
    output: np.ndarray     # (batch, positions, hidden): the block's output
    valid: np.ndarray      # (batch, positions): 1 where the padding mask keeps a token
    queries: Optional[np.ndarray] = None  # (batch, positions, heads, key_dim), where kept
    keys: Optional[np.ndarray] = None     # the same for the keys


def position_mean(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``(batch, positions, *units)`` → ``(batch, *units)``: the mean over the positions
    ``valid`` keeps (0 for an example with none).

    >>> position_mean(np.array([[[1.0], [3.0], [8.0]]]), np.array([[1.0, 1.0, 0.0]]))
    array([[2.]])
    """
    weights = valid.reshape(valid.shape + (1,) * (values.ndim - 2))
    return (values * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)


def _rms_norm(x: np.ndarray, scale: np.ndarray, eps: float, plus_one: bool) -> np.ndarray:
    normed = x / np.sqrt(np.square(x).mean(axis=-1, keepdims=True) + eps)
    return normed * (1.0 + scale if plus_one else scale)


_ACTIVATIONS = {"silu": silu, "swish": silu, "gelu": gelu, "gelu_approximate": gelu_tanh,
                "linear": lambda x: x,
                "relu": lambda x: np.maximum(x, 0.0)}


def activation_of(family: str, config: dict):
    """The feed-forward gate's activation as a NumPy function, or ``None`` when it is
    not one this pass knows (Gemma 3's is GELU in its tanh form, whatever the config)."""
    if family == "gemma3":
        return gelu_tanh
    name = config.get("activation", "silu")
    if isinstance(name, dict):  # a serialized function
        name = name.get("config", name.get("class_name"))
    if isinstance(name, str):  # "keras_hub>gelu_approximate": a registered function
        name = name.rpartition(">")[2]
    return _ACTIVATIONS.get(name) if isinstance(name, str) else None


def inverse_frequencies(family: str, config: dict, head_dim: int) -> np.ndarray:
    """The rotary embedding's inverse frequencies (``head_dim / 2`` of them)."""
    exponent = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
    if family == "gemma3":
        wavelength, scale = config.get("rope_wavelength", 10000.0), \
            config.get("rope_scaling_factor", 1.0)
    elif family == "llama":  # LlamaRotaryEmbedding: no position scaling, Llama 3's bands
        return _llama3_frequencies(config, 1.0 / config.get("rope_max_wavelength", 10000)
                                   ** exponent)
    else:
        wavelength, scale = config.get("rope_max_wavelength", 10000), \
            config.get("rope_scaling_factor", 1.0)
    return float(wavelength) ** -exponent / float(scale or 1.0)


def _llama3_frequencies(config: dict, inverse: np.ndarray) -> np.ndarray:
    """Llama 3.1's smoothing: long wavelengths divided by the adjustment factor, the
    band between interpolated (keras-hub's ``LlamaRotaryEmbedding._get_inverse_freq``)."""
    low = config.get("rope_low_freq_factor")
    if low is None:
        return inverse
    high = config["rope_high_freq_factor"]
    factor = config["rope_frequency_adjustment_factor"]
    length = config["rope_pretraining_sequence_length"]
    wavelength = 2 * math.pi / inverse
    adjusted = np.where(wavelength > length / low, inverse / factor, inverse)
    smooth = (length / wavelength - low) / (high - low)
    smoothed = (1 - smooth) * adjusted / factor + smooth * adjusted
    medium = (wavelength >= length / high) & (wavelength <= length / low)
    return np.where(medium, smoothed, adjusted)


def _rotate(x: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Rotary embedding of ``x`` (batch, positions, heads, head_dim) at positions 0…t-1."""
    angles = np.arange(x.shape[1], dtype=np.float64)[:, None] * inverse[None, :]
    angles = np.concatenate([angles, angles], axis=-1)[None, :, None, :]
    half = x.shape[-1] // 2
    turned = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * np.cos(angles) + turned * np.sin(angles)


def _call_inputs(inputs: list, roles: list) -> dict:
    """The block call's tensors by what they are: ``sequence``, ``padding``,
    ``attention`` (a custom mask) and ``vision`` (Gemma 3's image tokens)."""
    arrays = [np.asarray(t) for t in inputs]
    out = {"sequence": np.asarray(arrays[0], np.float64)}
    roles = list(roles) if len(roles) == len(arrays) else [""] * len(arrays)
    for array, role in zip(arrays[1:], roles[1:]):
        kind = next((k for k in ("padding", "attention", "vision") if k in role), None)
        if kind is None and not role and array.ndim == 2:
            kind = "padding"  # unnamed: a block's second input is its padding mask
        if kind is not None:
            out[kind] = array
    return out


def _vision_mask(vision: np.ndarray) -> np.ndarray:
    """Gemma 3: each run of image tokens attends to itself both ways."""
    vision = vision.astype(bool)
    starts = vision & ~np.pad(vision, [(0, 0), (1, 0)])[:, :-1]
    runs = np.where(vision, np.cumsum(starts, axis=-1), 0)
    return (runs[:, None, :] == runs[:, :, None]) & (runs[:, :, None] > 0)


def attention_mask(family: str, config: dict, given: dict) -> np.ndarray:
    """``(batch, queries, keys)`` booleans: which keys each query attends to."""
    batch, t = given["sequence"].shape[:2]
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    pad = given.get("padding")
    keys = np.ones((batch, 1, t), bool) if pad is None else (pad > 0.5)[:, None, :]
    if family == "gemma3" and config.get("use_bidirectional_attention"):
        mask = keys & np.swapaxes(keys, 1, 2)
        if config.get("use_sliding_window_attention"):
            size = int(config["sliding_window_size"])
            right = size // 2
            mask = mask & ((i - j <= size - right - 1) & (i - j >= -right))[None]
        return mask
    causal = np.broadcast_to(i >= j, (batch, t, t))
    if family == "gemma3" and given.get("vision") is not None:
        causal = causal | _vision_mask(given["vision"])
    mask = causal & keys
    if given.get("attention") is not None:
        mask = mask & (given["attention"] > 0.5)
    window = _window(family, config)
    if window:
        mask = mask & (np.abs(i - j) <= window - 1)[None]
    return mask


def _window(family: str, config: dict) -> Optional[int]:
    """The sliding window's size, if the block has one."""
    if family == "mistral":
        return config.get("sliding_window")
    if family == "qwen3":
        return config.get("sliding_window_size") or None
    if family == "gemma3" and config.get("use_sliding_window_attention"):
        return int(config["sliding_window_size"])
    return None


def _attention(family: str, config: dict, w: dict, x: np.ndarray, mask: np.ndarray):
    """``(contexts (b, t, heads, head_dim), output (b, t, hidden))`` of the attention,
    one query head (and a slice of the examples) at a time, so that no more than
    :data:`_CHUNK` scores are held at once."""
    spec = "btm,nmh->btnh" if family == "gemma3" else "btm,mnh->btnh"
    q, k, v = (np.einsum(spec, x, w[role]) for role in ("query", "key", "value"))
    if "query_norm" in w:  # Qwen3, Gemma 3: an RMS norm over each head's width
        eps = _HEAD_NORM_EPSILON[family]
        q = _rms_norm(q, w["query_norm"], eps, family == "gemma3")
        k = _rms_norm(k, w["key_norm"], eps, family == "gemma3")
    inverse = inverse_frequencies(family, config, q.shape[-1])
    q, k = _rotate(q, inverse), _rotate(k, inverse)
    cap = config.get("logit_soft_cap") if family == "gemma3" else None
    batch, t, heads = q.shape[:3]
    per, step = heads // k.shape[2], max(1, _CHUNK // (t * t))
    contexts = np.empty(q.shape[:3] + v.shape[-1:])
    for u in range(heads):  # query head u reads key/value head u // per
        for s in range(0, batch, step):
            at = slice(s, s + step)
            contexts[at, :, u] = _attend(q[at, :, u], k[at, :, u // per], v[at, :, u // per],
                                         mask[at], cap)
    return contexts, np.einsum("btnh,nhm->btm", contexts, w["output"])


def _attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, keep: np.ndarray,
            cap: Optional[float]) -> np.ndarray:
    """One head's contexts ``(b, t, head_dim)``: softmax of its (soft-capped) scores over
    the keys ``keep`` allows, a zero context where it allows none."""
    scores = np.einsum("bth,bsh->bts", q, k) / math.sqrt(q.shape[-1])
    if cap:
        scores = np.tanh(scores / cap) * cap
    scores = np.where(keep, scores, -np.inf)
    top = np.max(scores, axis=-1, keepdims=True)
    weights = np.where(keep, np.exp(scores - np.where(np.isfinite(top), top, 0.0)), 0.0)
    total = weights.sum(axis=-1, keepdims=True)
    return np.einsum("bts,bsh->bth", weights / np.where(total > 0, total, 1.0), v)


def decoder_forward(family: str, config: dict, weights: dict, inputs: list,
                    roles: list) -> Optional[DecoderPass]:
    """The block of ``family`` (``"llama"``, ``"mistral"``, ``"qwen3"``, ``"gemma3"``)
    with ``weights`` (``{role: array}``: query, key, value, output, attention_norm,
    gate, intermediate, down, ffw_norm and the optional query_norm, key_norm,
    post_attention_norm, post_ffw_norm) on the call's ``inputs`` (named by ``roles``);
    ``None`` where its activation is not one this pass knows."""
    act = activation_of(family, config)
    if act is None:
        return None
    w = {role: np.asarray(v, np.float64) for role, v in weights.items()}
    given = _call_inputs(inputs, roles)
    h = given["sequence"]
    gemma = family == "gemma3"
    eps = float(config.get("layer_norm_epsilon", 1e-6 if gemma else 1e-5))

    def norm(x, role):
        return _rms_norm(x, w[role], eps, gemma)
    contexts, attended = _attention(family, config, w, norm(h, "attention_norm"),
                                    attention_mask(family, config, given))
    if "post_attention_norm" in w:
        attended = norm(attended, "post_attention_norm")
    mid = h + attended
    x = norm(mid, "ffw_norm")
    hidden = act(x @ w["gate"]) * (x @ w["intermediate"])
    out = hidden @ w["down"]
    if "post_ffw_norm" in w:
        out = norm(out, "post_ffw_norm")
    pad = given.get("padding")
    valid = np.ones(h.shape[:2]) if pad is None else (np.asarray(pad) > 0.5).astype(float)
    return DecoderPass(contexts, hidden, mid + out, valid)


def transformer_forward(config: dict, weights: dict, inputs: list, roles: list,
                        causal: bool) -> Optional[DecoderPass]:
    """keras-hub's ``TransformerEncoder`` (BERT's block) or, ``causal``, its
    ``TransformerDecoder`` without cross-attention (GPT-2's), pre-norm or post-norm
    (``normalize_first``), with ``weights`` by role (query, key, value, output and
    intermediate, down kernels, each with its ``_bias``; attention_norm and ffw_norm, each
    with its ``_beta``) on the call's ``inputs`` (named by ``roles``); ``None`` where its
    activation is not one this pass knows."""
    act = activation_of("transformer", config)
    if act is None:
        return None
    w = {role: np.asarray(v, np.float64) for role, v in weights.items()}
    given = _call_inputs(inputs, roles)
    h = given["sequence"]
    batch, t = h.shape[:2]
    eps = float(config.get("layer_norm_epsilon", 1e-5))
    first = bool(config.get("normalize_first"))

    def norm(x, role):
        return layer_norm(x, w[role], w[f"{role}_beta"], eps)

    def project(x, role):
        return np.einsum("btm,mnd->btnd", x, w[role]) + w[f"{role}_bias"]
    pad = given.get("padding")
    keys = np.ones((batch, 1, t), bool) if pad is None else (pad > 0.5)[:, None, :]
    mask = np.broadcast_to(keys, (batch, t, t))
    if causal:
        mask = mask & (np.arange(t)[:, None] >= np.arange(t)[None, :])[None]
    if given.get("attention") is not None:
        mask = mask & (given["attention"] > 0.5)
    x = norm(h, "attention_norm") if first else h
    q, k, v = (project(x, role) for role in ("query", "key", "value"))
    contexts = np.stack([_attend(q[:, :, u], k[:, :, u], v[:, :, u], mask, None)
                         for u in range(q.shape[2])], axis=2)
    mid = h + np.einsum("btnd,ndm->btm", contexts, w["output"]) + w["output_bias"]
    mid = mid if first else norm(mid, "attention_norm")
    x = norm(mid, "ffw_norm") if first else mid
    hidden = act(x @ w["intermediate"] + w["intermediate_bias"])
    out = mid + hidden @ w["down"] + w["down_bias"]
    valid = np.ones((batch, t)) if pad is None else (np.asarray(pad) > 0.5).astype(float)
    return DecoderPass(contexts, hidden, out if first else norm(out, "ffw_norm"), valid,
                       queries=q, keys=k)
