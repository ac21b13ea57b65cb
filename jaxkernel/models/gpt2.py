"""GPT-2 causal decoder, LM and sequence-classification heads, and a KV cache.

Attribute names mirror Hugging Face (``h[i].attn.c_attn``). Our ``Linear`` keeps
its kernel as (in, out), exactly like HF's ``Conv1D``, so GPT-2 weights import
without transposes.

Positions follow HF generation: ``cumsum(attention_mask) - 1``, so left-padded
prompts give their real tokens positions 0, 1, ... With a prefix of P virtual
tokens they start at P, as in HF/PEFT where the prefix is a cache of length P.

Example::

    model = Gpt2LMHeadModel(Gpt2Config(n_embd=64, n_layer=2, n_head=4), rngs=nnx.Rngs(0))
    logits, _ = model(input_ids, attention_mask)       # (B, T, V)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxkernel.models.attention import KVCache, attention, causal_mask, position_ids_from_mask
from jaxkernel.models.dropout import dropout
from jaxkernel.models.layers import ACTIVATIONS, Embed, LayerNorm, Linear, constrain, run_layer


@dataclasses.dataclass(frozen=True)
class Gpt2Config:
    """Architecture and head hyper-parameters; field names follow HF's GPT2Config."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    bos_token_id: int | None = 50256
    eos_token_id: int | None = 50256
    pad_token_id: int | None = None
    num_labels: int = 2
    labels: tuple[str, ...] | None = None
    dtype: str | None = None  # compute dtype, e.g. "bfloat16"; params stay float32

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}: "
                "pick sizes where n_embd = heads * head_dim"
            )
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(
                f"activation_function {self.activation_function!r} is not supported; use one of {sorted(ACTIVATIONS)}"
            )
        if self.labels is not None and len(self.labels) != self.num_labels:
            raise ValueError(f"{len(self.labels)} label names given for num_labels={self.num_labels}")

    @property
    def inner_size(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def compute_dtype(self):
        return None if self.dtype is None else jnp.dtype(self.dtype)


def _linear(config: Gpt2Config, n_in, n_out, axes, rngs, use_bias=True) -> Linear:
    return Linear(
        n_in, n_out, axes=axes, use_bias=use_bias, stddev=config.initializer_range,
        dtype=config.compute_dtype, rngs=rngs,
    )


class Gpt2Attention(nnx.Module):
    def __init__(self, config: Gpt2Config, *, rngs: nnx.Rngs):
        self.num_heads = config.n_head
        d = config.n_embd
        self.c_attn = _linear(config, d, 3 * d, ("embed", "qkv"), rngs)
        self.c_proj = _linear(config, d, d, ("heads", "embed"), rngs)
        self.attn_dropout = dropout(config.attn_pdrop, rngs)
        self.resid_dropout = dropout(config.resid_pdrop, rngs)

    def __call__(self, x, mask, layer_cache=None, cache_index=None, prefix_kv=None):
        """x (B, T, D); layer_cache optional (keys, values) each (B, S, N, H)."""
        q, k, v = jnp.split(self.c_attn(x), 3, axis=-1)
        q, k, v = (t.reshape(t.shape[:-1] + (self.num_heads, -1)) for t in (q, k, v))
        new_cache = None
        if layer_cache is not None:
            cached_k, cached_v = layer_cache
            k = jax.lax.dynamic_update_slice_in_dim(cached_k, k.astype(cached_k.dtype), cache_index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cached_v, v.astype(cached_v.dtype), cache_index, axis=1)
            new_cache = (k, v)
        out = attention(q, k, v, mask, prefix_kv=prefix_kv, dropout=self.attn_dropout)
        out = self.c_proj(out.reshape(out.shape[:-2] + (-1,)))
        return self.resid_dropout(out), new_cache


class Gpt2Mlp(nnx.Module):
    def __init__(self, config: Gpt2Config, *, rngs: nnx.Rngs):
        self.c_fc = _linear(config, config.n_embd, config.inner_size, ("embed", "mlp"), rngs)
        self.c_proj = _linear(config, config.inner_size, config.n_embd, ("mlp", "embed"), rngs)
        self.act = ACTIVATIONS[config.activation_function]
        self.dropout = dropout(config.resid_pdrop, rngs)

    def __call__(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Gpt2Block(nnx.Module):
    def __init__(self, config: Gpt2Config, *, rngs: nnx.Rngs):
        self.ln_1 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = Gpt2Attention(config, rngs=rngs)
        self.ln_2 = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = Gpt2Mlp(config, rngs=rngs)

    def __call__(self, x, mask, layer_cache=None, cache_index=None, prefix_kv=None):
        h, new_cache = self.attn(self.ln_1(x), mask, layer_cache, cache_index, prefix_kv)
        x = x + h
        return x + self.mlp(self.ln_2(x)), new_cache


class Gpt2Model(nnx.Module):
    """The bare decoder (HF ``GPT2Model``)."""

    task = "feature-extraction"

    def __init__(self, config: Gpt2Config, *, rngs: nnx.Rngs):
        self.config = config
        init = dict(stddev=config.initializer_range, dtype=config.compute_dtype, rngs=rngs)
        self.wte = Embed(config.vocab_size, config.n_embd, **init)
        self.wpe = Embed(config.n_positions, config.n_embd, axes=(None, "embed"), **init)
        self.drop = dropout(config.embd_pdrop, rngs)
        self.h = nnx.List([Gpt2Block(config, rngs=rngs) for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.remat = False  # set by the trainer (train.remat): recompute block activations in backward
        # Set by jaxkernel.peft.apply_prefix_tuning; then builds prefix_kv when none is passed.
        self.prefix_encoder = nnx.data(None)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, cache: KVCache | None = None, prefix_kv=None):
        """Run the decoder.

        Args:
          input_ids: (B, T) token ids.
          attention_mask: (B, T), 1 real / 0 padding. Default all ones.
          position_ids: (B, T). Default from the mask (and cache, and prefix
            length P), see module doc.
          cache: optional KVCache; the T new tokens are written at ``cache.index``.
          prefix_kv: optional per-layer list of (keys, values), each (B, P, N, H),
            visible to every token (not stored in the cache). Default: from
            ``self.prefix_encoder`` when prefix tuning is applied.

        Returns:
          (hidden (B, T, D), updated cache or None).
        """
        batch, length = input_ids.shape
        if prefix_kv is None and self.prefix_encoder is not None:
            prefix_kv = self.prefix_encoder(batch)
        num_prefix = 0 if prefix_kv is None else prefix_kv[0][0].shape[1]
        if position_ids is None and num_prefix:
            span = length if cache is None else cache.keys.shape[2]
            if num_prefix + span > self.config.n_positions:
                raise ValueError(
                    f"{span} positions after a prefix of {num_prefix} exceed n_positions={self.config.n_positions}: "
                    "use shorter inputs / a smaller KVCache max_length, or a shorter prefix"
                )
        if attention_mask is None:
            attention_mask = jnp.ones((batch, length), jnp.int32)
        attention_mask = attention_mask.astype(jnp.int32)
        if cache is None:
            if position_ids is None:
                position_ids = position_ids_from_mask(attention_mask, num_prefix)
            positions = jnp.arange(length)
            mask = causal_mask(positions, positions) & attention_mask.astype(bool)[:, None, None, :]
        else:
            if position_ids is None:
                position_ids = position_ids_from_mask(attention_mask, cache.valid.sum(-1) + num_prefix)
            valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, attention_mask.astype(bool), cache.index, axis=1)
            query_positions = cache.index + jnp.arange(length)
            mask = causal_mask(query_positions, jnp.arange(valid.shape[1])) & valid[:, None, None, :]
        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))
        new_keys, new_values = [], []
        for i, block in enumerate(self.h):
            layer_cache = None if cache is None else (cache.keys[i], cache.values[i])
            x, new_layer_cache = run_layer(
                block, x, mask, layer_cache, None if cache is None else cache.index,
                None if prefix_kv is None else prefix_kv[i], remat=self.remat,
            )
            x = constrain(x, ("batch", "length", "embed"))  # layer boundary; no-op outside a sharded step
            if cache is not None:
                new_keys.append(new_layer_cache[0])
                new_values.append(new_layer_cache[1])
        x = self.ln_f(x)
        if cache is None:
            return x, None
        return x, KVCache(jnp.stack(new_keys), jnp.stack(new_values), valid, cache.index + length)


class Gpt2LMHeadModel(nnx.Module):
    """Causal LM: logits (B, T, V) from the output projection tied to ``wte``."""

    task = "causal-lm"
    head_modules = ()

    def __init__(self, config: Gpt2Config, *, rngs: nnx.Rngs):
        self.config = config
        self.transformer = Gpt2Model(config, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, cache=None, prefix_kv=None):
        """Returns (logits (B, T, V) float32, updated cache or None)."""
        hidden, cache = self.transformer(input_ids, attention_mask, position_ids, cache, prefix_kv)
        return self.transformer.wte.attend(hidden).astype(jnp.float32), cache


class Gpt2ForSequenceClassification(nnx.Module):
    """Classifies from the last real token, like HF (rightmost token != pad id)."""

    task = "sequence-classification"
    head_modules = ("score",)

    def __init__(self, config: Gpt2Config, *, rngs: nnx.Rngs):
        self.config = config
        self.transformer = Gpt2Model(config, rngs=rngs)
        self.score = _linear(config, config.n_embd, config.num_labels, ("embed", None), rngs, use_bias=False)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, cache=None, prefix_kv=None):
        """Returns logits (B, num_labels)."""
        hidden, _ = self.transformer(input_ids, attention_mask, position_ids, None, prefix_kv)
        length = input_ids.shape[1]
        if self.config.pad_token_id is not None:
            is_real = input_ids != self.config.pad_token_id
        elif attention_mask is not None:
            is_real = attention_mask.astype(bool)
        else:
            is_real = jnp.ones_like(input_ids, bool)
        last = jnp.argmax(jnp.where(is_real, jnp.arange(length), -1), axis=-1)  # (B,)
        pooled = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
        return self.score(pooled)


GPT2_TASKS: dict[str, type[nnx.Module]] = {
    cls.task: cls for cls in (Gpt2Model, Gpt2LMHeadModel, Gpt2ForSequenceClassification)
}
