"""Scaled dot-product attention as a pure function, plus the masks it takes.

Prefix tuning is an *input* here (``prefix_kv``), not a fork of the models:
prefix keys/values are prepended and always visible.

Example::

    mask = padding_mask(attention_mask)            # (B, 1, 1, S)
    out = attention(q, k, v, mask)                 # q (B, T, N, H) -> (B, T, N, H)
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


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


def causal_mask(query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
    """Boolean (1, 1, T, S): a query sees keys at its own position or earlier."""
    return (key_positions[None, :] <= query_positions[:, None])[None, None]


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    prefix_kv: tuple[jax.Array, jax.Array] | None = None,
    dropout: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Softmax attention; scores and softmax run in float32.

    Args:
      q: queries (B, T, N, H).
      k, v: keys and values (B, S, N, H).
      mask: boolean, broadcastable to (B, N, T, S); True = may attend. None = all.
      prefix_kv: optional (keys, values), each (B, P, N, H), prepended to k/v and
        visible to every query (prefix tuning).
      dropout: optional function applied to the attention probabilities.

    Returns:
      (B, T, N, H) in the dtype of ``v``.
    """
    head_dim = q.shape[-1]
    if prefix_kv is not None:
        prefix_k, prefix_v = prefix_kv
        k = jnp.concatenate([prefix_k.astype(k.dtype), k], axis=1)
        v = jnp.concatenate([prefix_v.astype(v.dtype), v], axis=1)
        if mask is not None:
            num_prefix = prefix_k.shape[1]
            mask = jnp.broadcast_to(mask, mask.shape[:-1] + (mask.shape[-1],))
            visible = jnp.ones(mask.shape[:-1] + (num_prefix,), dtype=bool)
            mask = jnp.concatenate([visible, mask], axis=-1)
    scores = jnp.einsum("BTNH,BSNH->BNTS", q, k, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(head_dim))
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    if dropout is not None:
        probs = dropout(probs)
    return jnp.einsum("BNTS,BSNH->BTNH", probs.astype(v.dtype), v)
