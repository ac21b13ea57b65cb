"""Autoregressive generation for causal LMs: greedy, temperature, top-k, top-p, EOS stop.

The whole loop is one ``jax.jit`` over ``(graphdef, state)`` with a fixed-size
output buffer, so a call compiles once per (batch, prompt length, max_new_tokens).
With ``use_cache=True`` (default) a KV cache makes each step O(1) in the prompt;
``use_cache=False`` re-runs the full buffer each step (causal masking hides the
not-yet-generated tail) and must give the same tokens — it is the check.

Prompts may be left-padded (``attention_mask`` 0 on the left), as HF does.

Example::

    ids = generate(model, prompt_ids, prompt_mask, max_new_tokens=32)                # greedy
    ids = generate(model, prompt_ids, prompt_mask, max_new_tokens=32, do_sample=True,
                   temperature=0.8, top_k=50, top_p=0.95, seed=0)
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from jaxkernel.models.attention import KVCache
from jaxkernel.models.registry import family_of


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    eos_token_id: int | tuple[int, ...] | None = None  # several ids (a list, as in generation_config.json) all stop
    pad_token_id: int | None = None  # emitted after EOS; defaults to the (first) eos_token_id, then 0
    use_cache: bool = True

    def __post_init__(self):
        eos = self.eos_token_id
        if eos is not None and not isinstance(eos, int):  # hashable: the config is a jit static argument
            eos = (tuple(int(i) for i in eos) or None) if hasattr(eos, "__iter__") else int(eos)
            object.__setattr__(self, "eos_token_id", eos)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def process_logits(logits: jax.Array, config: GenerationConfig) -> jax.Array:
    """Temperature, then top-k, then top-p filtering (HF's order); filtered -> -inf."""
    logits = logits.astype(jnp.float32) / config.temperature
    if config.top_k is not None and config.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, config.top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if config.top_p is not None and config.top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # keep a token while the mass before it < top_p
        keep_sorted = mass_before < config.top_p
        threshold = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def generate(
    model: nnx.Module,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    seed: int = 0,
    **options,
) -> jax.Array:
    """Continue ``input_ids`` (B, T) by up to ``max_new_tokens``; returns (B, T + max_new_tokens).

    Options are the fields of ``GenerationConfig``. Rows that hit EOS are filled
    with ``pad_token_id`` afterwards; the loop stops early once all rows are done.
    """
    config = GenerationConfig(**options)
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    attention_mask = jnp.asarray(attention_mask, jnp.int32)
    family = family_of(model)
    if not family.causal or model.task != "causal-lm":
        raise ValueError(f"generate needs a causal-LM model; this is a {family.model_type} {model.task!r} model")
    positions = family.dims(model.config).positions
    if input_ids.shape[1] + config.max_new_tokens > positions:
        raise ValueError(
            f"prompt length {input_ids.shape[1]} + max_new_tokens {config.max_new_tokens} exceeds "
            f"the model's {positions} positions"
        )
    graphdef, state = nnx.split(model)
    return _generate_jit(graphdef, state, input_ids, attention_mask, jax.random.key(seed), config)


@partial(jax.jit, static_argnums=(0, 5))
def _generate_jit(graphdef, state, input_ids, attention_mask, rng, config: GenerationConfig):
    model = nnx.merge(graphdef, state)
    batch, prompt_len = input_ids.shape
    total = prompt_len + config.max_new_tokens
    eos = config.eos_token_id
    eos = (eos,) if isinstance(eos, int) else eos
    pad = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos is not None else 0)

    tokens = jnp.full((batch, total), pad, jnp.int32).at[:, :prompt_len].set(input_ids)
    mask = jnp.zeros((batch, total), jnp.int32).at[:, :prompt_len].set(attention_mask)

    def choose(logits, key):
        if not config.do_sample:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return jax.random.categorical(key, process_logits(logits, config), axis=-1).astype(jnp.int32)

    if config.use_cache:
        cache = KVCache.create(model.config, batch, total, dtype=model.config.compute_dtype or jnp.float32)
        logits, cache = model(input_ids, attention_mask, cache=cache)
        next_logits = logits[:, -1]
    else:
        cache = None
        logits, _ = model(tokens, mask)
        next_logits = logits[:, prompt_len - 1]

    def cond(carry):
        step, _, _, _, done, _, _ = carry
        return (step < config.max_new_tokens) & ~jnp.all(done)

    def body(carry):
        step, tokens, mask, next_logits, done, cache, rng = carry
        rng, key = jax.random.split(rng)
        token = jnp.where(done, pad, choose(next_logits, key))
        position = prompt_len + step
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, token[:, None], position, axis=1)
        mask = jax.lax.dynamic_update_slice_in_dim(mask, jnp.ones((batch, 1), jnp.int32), position, axis=1)
        if eos is not None:
            done = done | jnp.isin(token, jnp.asarray(eos, jnp.int32))
        if config.use_cache:
            logits, cache = model(token[:, None], jnp.ones((batch, 1), jnp.int32), cache=cache)
            next_logits = logits[:, -1]
        else:
            logits, _ = model(tokens, mask)
            next_logits = jax.lax.dynamic_index_in_dim(logits, position, axis=1, keepdims=False)
        return step + 1, tokens, mask, next_logits, done, cache, rng

    done = jnp.zeros((batch,), bool)
    carry = (jnp.int32(0), tokens, mask, next_logits, done, cache, rng)
    return jax.lax.while_loop(cond, body, carry)[1]
