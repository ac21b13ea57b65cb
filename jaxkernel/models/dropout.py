"""Dropout whose masks cost a quarter of the random bits ``nnx.Dropout`` draws.

``nnx.Dropout`` draws one 32-bit uniform per element through ``jax.random.bernoulli``; with
threefry (partitionable, JAX's default) that is one full threefry-2x32 hash, 64 random bits,
per element, of which it keeps 23. On CPUs that hashing was a fifth of a LoRA fine-tuning step
(``benchmarks/results/profile_step-2026-11-29.txt``). Here one hash feeds four elements: its two
32-bit words are split into four 16-bit integers, and an element is kept when its integer is at
least ``round(rate * 65536)``. The rate is exact to 1/65536 and the kept values are scaled by
the realised keep probability, so the output's expectation equals the input exactly.

The hash counters are the elements' global indices (as in partitionable threefry), so a mask is
a pure function of (key, shape): the same on one device or sharded over a mesh, and the same
after a resume.

    from jaxkernel.models.dropout import dropout
    self.dropout = dropout(0.1, rngs)        # eval mode until model.train()
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.extend.random import threefry2x32_p

_LEVELS = 1 << 16  # thresholds are 16-bit: four per threefry hash
_PER_HASH = 4


def _global_index(shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """Each element's row-major index as (high, low) uint32 words."""
    size = math.prod(shape)
    if size >= 1 << 32:
        raise ValueError(f"dropout mask of {size} elements is too large (at most 2**32 - 1 per call)")
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
        stride *= shape[axis]
    return jnp.zeros(shape, jnp.uint32), index


def random_uint16(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform 16-bit integers of ``shape``, four from each threefry-2x32 hash.

    Args:
      key: a threefry key (typed ``jax.random.key`` or raw ``(2,) uint32``); a typed key of
        another implementation (``rbg``...) draws through ``jax.random.bits`` instead.
      shape: output shape; the last axis is drawn in groups of four (padded, then cut).
    """
    out_shape = tuple(shape)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if str(jax.random.key_impl(key)) != "threefry2x32":  # rbg & co: their own generator, one draw per element
            return jax.random.bits(key, out_shape, jnp.uint16)
        key = jax.random.key_data(key)
    shape = out_shape or (1,)
    groups = -(-shape[-1] // _PER_HASH)
    hashed_shape = (*shape[:-1], groups)
    words = threefry2x32_p.bind(key[0], key[1], *_global_index(hashed_shape))
    halves = lax.bitcast_convert_type(jnp.stack(words, axis=-1), jnp.uint16)  # (..., groups, 2, 2)
    return halves.reshape(*shape[:-1], groups * _PER_HASH)[..., : shape[-1]].reshape(out_shape)


def dropout_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> tuple[jax.Array, float]:
    """A keep-mask for dropout at ``rate`` and the scale kept values get.

    Returns:
      ``(keep, scale)``: ``keep`` is boolean of ``shape`` with ``P(keep) = 1 - t / 65536``,
      ``t = min(round(rate * 65536), 65535)``; ``scale = 1 / P(keep)`` keeps the expectation exact.
    """
    threshold = min(round(rate * _LEVELS), _LEVELS - 1)  # a rate just under 1 still keeps 1 in 65536
    keep_prob = 1.0 - threshold / _LEVELS
    return random_uint16(key, shape) >= threshold, 1.0 / keep_prob


class Dropout(nnx.Dropout):
    """``nnx.Dropout`` (same arguments, state and train/eval switch) with cheaper masks."""

    def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None) -> jax.Array:
        deterministic = self.deterministic if deterministic is None else deterministic
        if self.rate == 0.0 or deterministic:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        rngs = self.rngs if rngs is None else rngs
        if rngs is None:
            raise ValueError("dropout is on (training) but was built without rngs: pass rngs=nnx.Rngs(dropout=seed)")
        if isinstance(rngs, nnx.Rngs):
            key = rngs[self.rng_collection]()
        elif isinstance(rngs, nnx.RngStream):
            key = rngs()
        else:
            key = rngs
        mask_shape = list(inputs.shape)
        for axis in self.broadcast_dims:
            mask_shape[axis] = 1
        keep, scale = dropout_mask(key, self.rate, tuple(mask_shape))
        keep = jnp.broadcast_to(keep, inputs.shape)
        return lax.select(keep, inputs * jnp.asarray(scale, inputs.dtype), jnp.zeros_like(inputs))


def dropout(rate: float, rngs: nnx.Rngs) -> Dropout:
    """A :class:`Dropout` built in eval mode: ``model.train()`` turns it on for fine-tuning."""
    return Dropout(rate, deterministic=True, rngs=rngs)
