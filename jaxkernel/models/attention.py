"""Scaled dot-product attention as a pure function, plus the masks and rotary positions it takes.

Prefix tuning is an *input* here (``prefix_kv``), not a fork of the models:
prefix keys/values are prepended and always visible. Keys and values may have
fewer heads than queries (grouped-query attention, K divides N).

Example::

    mask = padding_mask(attention_mask)            # (B, 1, 1, S)
    out = attention(q, k, v, mask)                 # q (B, T, N, H), k/v (B, S, K, H) -> (B, T, N, H)
    inv_freq = rope_inverse_frequencies(64, 10000.0)
    cos, sin = rotary_cos_sin(position_ids, inv_freq)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class KVCache(NamedTuple):
    """Pre-allocated keys/values for incremental decoding (any decoder family).

    ``keys``/``values``: (L, B, S, K, H) with K the key/value heads; ``valid``:
    (B, S) True where a real token has been written; ``index``: how many
    positions are filled.
    """

    keys: jax.Array
    values: jax.Array
    valid: jax.Array
    index: jax.Array

    @classmethod
    def create(cls, config, batch: int, max_length: int, dtype=jnp.float32) -> "KVCache":
        """An empty cache for a model of ``config`` (sizes from the family registry)."""
        from jaxkernel.models.registry import family_of_config

        dims = family_of_config(config).dims(config)
        shape = (dims.layers, batch, max_length, dims.kv_heads, dims.head_dim)
        return cls(
            keys=jnp.zeros(shape, dtype),
            values=jnp.zeros(shape, dtype),
            valid=jnp.zeros((batch, max_length), bool),
            index=jnp.zeros((), jnp.int32),
        )


def position_ids_from_mask(attention_mask: jax.Array, offset: jax.Array | int = 0) -> jax.Array:
    """HF's generation positions: ``cumsum(mask) - 1`` (+ tokens already cached); pads get 1."""
    positions = jnp.cumsum(attention_mask, axis=-1) - 1 + jnp.asarray(offset)[..., None]
    return jnp.where(attention_mask.astype(bool), positions, 1).astype(jnp.int32)


def padding_mask(attention_mask: jax.Array) -> jax.Array:
    """(B, S) 1/0 mask -> boolean (B, 1, 1, S), True where a key may be attended."""
    return attention_mask.astype(bool)[:, None, None, :]


def causal_mask(query_positions: jax.Array, key_positions: jax.Array, window: int | None = None) -> jax.Array:
    """Boolean (1, 1, T, S): a query sees keys at its own position or earlier.

    With ``window`` (sliding-window attention, Mistral) only the last ``window``
    of them, itself included: ``query - window < key <= query``, HF's rule.
    Positions here are slots of the sequence buffer, not position ids.
    """
    visible = key_positions[None, :] <= query_positions[:, None]
    if window is not None:
        visible = visible & (key_positions[None, :] > query_positions[:, None] - window)
    return visible[None, None]


ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "reference")
_implementation = "auto"


def set_attention_implementation(name: str) -> None:
    """Choose how :func:`attention` runs when no dropout is active (process-wide).

    "auto" (default): ``jax.nn.dot_product_attention`` with cuDNN's fused kernel on
    NVIDIA GPUs for bf16/fp16 inputs, XLA's otherwise; "xla"/"cudnn": force one;
    "reference": the explicit einsum-softmax-einsum below (what runs with dropout).
    Takes effect for programs traced afterwards.
    """
    global _implementation
    if name not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {name!r} is unknown; choose one of {ATTENTION_IMPLEMENTATIONS}")
    _implementation = name


def _dropout_active(dropout) -> bool:
    """An ``nnx.Dropout`` in eval mode or at rate 0 draws nothing: the fused path may run."""
    if dropout is None:
        return False
    return not (getattr(dropout, "deterministic", False) or getattr(dropout, "rate", 1.0) == 0.0)


def _fused_backend(dtype) -> str | None:
    """``jax.nn.dot_product_attention``'s implementation for this call, or None for the reference path."""
    if _implementation == "reference":
        return None
    if _implementation != "auto":
        return _implementation
    if jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return "cudnn"
    return "xla"


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    prefix_kv: tuple[jax.Array, jax.Array] | None = None,
    dropout: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Softmax attention; scores and softmax run in float32.

    Without active dropout this is ``jax.nn.dot_product_attention`` (cuDNN's fused
    kernel on NVIDIA GPUs in bf16/fp16, XLA elsewhere; see
    :func:`set_attention_implementation`); with dropout on the probabilities it is
    the explicit reference computation, which the fused kernels cannot express.

    Args:
      q: queries (B, T, N, H).
      k, v: keys and values (B, S, K, H). K = N is multi-head attention; K < N
        (K dividing N) is grouped-query attention: query head n reads key/value
        head n // (N / K), the order of HF's ``repeat_kv``.
      mask: boolean, broadcastable to (B, N, T, S); True = may attend. None = all.
      prefix_kv: optional (keys, values), each (B, P, K, H), prepended to k/v and
        visible to every query (prefix tuning).
      dropout: optional function applied to the attention probabilities.

    Returns:
      (B, T, N, H) in the dtype of ``v``.
    """
    batch, length, num_heads, head_dim = q.shape
    num_kv = k.shape[2]
    if num_heads % num_kv:
        raise ValueError(f"{num_heads} query heads cannot share {num_kv} key/value heads: K must divide N")
    if prefix_kv is not None:
        prefix_k, prefix_v = prefix_kv
        k = jnp.concatenate([prefix_k.astype(k.dtype), k], axis=1)
        v = jnp.concatenate([prefix_v.astype(v.dtype), v], axis=1)
        if mask is not None:
            num_prefix = prefix_k.shape[1]
            visible = jnp.ones(mask.shape[:-1] + (num_prefix,), dtype=bool)
            mask = jnp.concatenate([visible, mask.astype(bool)], axis=-1)
    backend = None if _dropout_active(dropout) else _fused_backend(v.dtype)
    if backend is not None:
        if mask is not None:  # the fused API wants a rank-4 boolean mask
            mask = jnp.broadcast_to(mask.astype(bool), (1,) * (4 - mask.ndim) + mask.shape)
        q, k = q.astype(v.dtype), k.astype(v.dtype)
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=backend)
    return reference_attention(q, k, v, mask, dropout)


def reference_attention(q, k, v, mask, dropout=None) -> jax.Array:
    """The explicit computation (what ``attention`` runs under dropout): same arguments, no prefix."""
    batch, length, num_heads, head_dim = q.shape
    num_kv = k.shape[2]
    groups = num_heads // num_kv
    if groups == 1:
        scores = jnp.einsum("BTNH,BSNH->BNTS", q, k, preferred_element_type=jnp.float32)
    else:
        grouped = q.reshape(batch, length, num_kv, groups, head_dim)
        scores = jnp.einsum("BTKGH,BSKH->BKGTS", grouped, k, preferred_element_type=jnp.float32)
        scores = scores.reshape(batch, num_heads, length, -1)  # head n = k * G + g
    scores = scores / jnp.sqrt(jnp.float32(head_dim))
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    if dropout is not None:
        probs = dropout(probs)
    probs = probs.astype(v.dtype)
    if groups == 1:
        return jnp.einsum("BNTS,BSNH->BTNH", probs, v)
    probs = probs.reshape(batch, num_kv, groups, length, -1)
    return jnp.einsum("BKGTS,BSKH->BTKGH", probs, v).reshape(batch, length, num_heads, head_dim)


# ---------------------------------------------------------------- rotary position embeddings

ROPE_TYPES = ("default", "linear", "llama3")


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: Mapping[str, Any] | None = None) -> np.ndarray:
    """Rotary inverse frequencies (H/2,) float32, computed as HF computes them.

    Args:
      head_dim: H (even).
      theta: the base (``rope_theta``).
      scaling: HF's ``rope_scaling`` / ``rope_parameters`` dict, or None. Its
        ``rope_type`` (or legacy ``type``) may be "default", "linear" (``factor``:
        positions divided by it) or "llama3" (``factor``, ``low_freq_factor``,
        ``high_freq_factor``, ``original_max_position_embeddings``).

    Raises:
      ValueError: another rope type (yarn, dynamic, longrope...) or a partial rotary factor.
    """
    scaling = dict(scaling or {})
    rope_type = scaling.get("rope_type", scaling.get("type")) or "default"
    if rope_type not in ROPE_TYPES:
        raise ValueError(
            f"rope_scaling type {rope_type!r} is not supported by jaxkernel; supported: {', '.join(ROPE_TYPES)}"
        )
    if scaling.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"partial_rotary_factor={scaling['partial_rotary_factor']} is not supported (only 1.0)")
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}")
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = np.float32(1.0) / (np.float32(theta) ** exponent)
    if rope_type == "linear":
        inv_freq = inv_freq / np.float32(scaling["factor"])
    elif rope_type == "llama3":
        inv_freq = _llama3_frequencies(inv_freq, scaling)
    return inv_freq.astype(np.float32)


def _llama3_frequencies(inv_freq: np.ndarray, scaling: Mapping[str, Any]) -> np.ndarray:
    """Llama 3.1: long wavelengths divided by ``factor``, short kept, a smooth ramp between."""
    try:
        factor = np.float32(scaling["factor"])
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        context = scaling["original_max_position_embeddings"]
    except KeyError as err:
        raise ValueError(f"rope_scaling type 'llama3' needs {err.args[0]!r}; got {dict(scaling)}") from None
    low_wavelen, high_wavelen = context / low, context / high
    wavelen = np.float32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rotary_cos_sin(position_ids: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """(cos, sin), each (B, T, H) float32, for integer ``position_ids`` (B, T)."""
    freqs = position_ids.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # (B, T, H/2)
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate (B, T, N, H) queries or keys by (B, T, H) angles (HF's rotate_half layout)."""
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    first, second = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-second, first], axis=-1) * sin
