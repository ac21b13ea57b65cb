"""Llama-style decoders: RMSNorm, rotary positions, grouped-query attention, SwiGLU MLP.

One model file for the HF model types that share this architecture (``LlamaConfig.model_type``
tells them apart): Llama, and Mistral (``sliding_window``: a query sees only the last W
slots of the sequence buffer, itself included, as in HF's mask) and Qwen2 (q/k/v always
biased, o_proj never; windows only on the layers ``layer_types`` marks "sliding_attention"). A prefix-tuning prefix is,
as in HF/PEFT, the first P slots of that buffer: a sliding window moves past it too. Attribute names mirror HF (``model.layers[i].self_attn.q_proj``,
``mlp.gate_proj``...), so the mapping table (``jaxkernel.hf.llama``) only transposes
``nn.Linear`` weights.

Positions follow HF generation: ``cumsum(attention_mask) - 1``, so left-padded prompts
give their real tokens positions 0, 1, ... (HF's plain forward uses ``arange``: pass
``position_ids`` to compare left-padded batches). With a prefix of P virtual tokens
positions start at P, as in HF/PEFT where the prefix is a cache of length P. The KV
cache holds the K key/value heads, not the N query heads.

Example::

    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=100)
    model = LlamaForCausalLM(config, rngs=nnx.Rngs(0))
    logits, _ = model(input_ids, attention_mask)       # (B, T, V)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxkernel.models.attention import (
    KVCache, apply_rotary, attention, causal_mask, position_ids_from_mask, rope_inverse_frequencies, rotary_cos_sin,
)
from jaxkernel.models.dropout import dropout
from jaxkernel.models.layers import ACTIVATIONS, Embed, GatedMlp, Linear, RMSNorm, constrain, run_layer


def _frozen(value: Any) -> Any:
    """dicts/lists -> sorted tuples of items / tuples, so configs stay hashable (jit static)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Architecture and head hyper-parameters; field names follow HF's LlamaConfig.

    ``rope_scaling`` takes HF's dict (``{"rope_type": "linear", "factor": 2.0}``) and keeps
    it as a tuple of items; ``scaling_dict`` gives the dict back. ``eos_token_id`` may be
    a list (Llama 3 chat models stop on several tokens).
    """

    model_type: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: = num_attention_heads (multi-head attention)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Any = None
    attention_bias: bool = False
    mlp_bias: bool = False
    attention_dropout: float = 0.0
    tie_word_embeddings: bool = False
    sliding_window: int | None = None  # Mistral: attend to the last W buffer slots only; None = full causal
    layer_types: tuple[str, ...] | None = None  # Qwen2: per layer "full_attention" / "sliding_attention"
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    pad_token_id: int | None = None
    num_labels: int = 2
    labels: tuple[str, ...] | None = None
    dtype: str | None = None  # compute dtype, e.g. "bfloat16"; params stay float32

    def __post_init__(self):
        object.__setattr__(self, "rope_scaling", _frozen(self.rope_scaling))
        object.__setattr__(self, "eos_token_id", _frozen(self.eos_token_id))
        object.__setattr__(self, "layer_types", _frozen(self.layer_types))
        if self.layer_types is not None and (
            len(self.layer_types) != self.num_hidden_layers
            or set(self.layer_types) - {"full_attention", "sliding_attention"}
        ):
            raise ValueError(
                f"layer_types {self.layer_types} must name 'full_attention' or 'sliding_attention' for each of "
                f"the {self.num_hidden_layers} layers"
            )
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}: set head_dim, or pick sizes where hidden_size = heads * head_dim"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of num_key_value_heads "
                f"{self.num_key_value_heads}: each key/value head serves a whole group of query heads"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; use one of {sorted(ACTIVATIONS)}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window={self.sliding_window} must be a positive number of tokens, or None")
        if self.labels is not None and len(self.labels) != self.num_labels:
            raise ValueError(f"{len(self.labels)} label names given for num_labels={self.num_labels}")
        rope_inverse_frequencies(self.attention_head_dim, self.rope_theta, self.scaling_dict)  # refuse bad rope early

    @property
    def attention_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads

    @property
    def layer_windows(self) -> tuple[int | None, ...]:
        """Each layer's sliding window (None: full causal attention)."""
        if self.layer_types is None:
            return (self.sliding_window,) * self.num_hidden_layers
        return tuple(self.sliding_window if t == "sliding_attention" else None for t in self.layer_types)

    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias or self.model_type == "qwen2"  # HF Qwen2 always biases q/k/v

    @property
    def o_bias(self) -> bool:
        return self.attention_bias and self.model_type != "qwen2"

    @property
    def scaling_dict(self) -> dict | None:
        return None if self.rope_scaling is None else dict(self.rope_scaling)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        eos = self.eos_token_id
        return () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)

    @property
    def compute_dtype(self):
        return None if self.dtype is None else jnp.dtype(self.dtype)


def _linear(config: LlamaConfig, n_in, n_out, axes, rngs, use_bias=False) -> Linear:
    return Linear(
        n_in, n_out, axes=axes, use_bias=use_bias, stddev=config.initializer_range,
        dtype=config.compute_dtype, rngs=rngs,
    )


class LlamaAttention(nnx.Module):
    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        d, h = config.hidden_size, config.attention_head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, h
        bias = config.qkv_bias
        self.q_proj = _linear(config, d, self.num_heads * h, ("embed", "heads"), rngs, bias)
        self.k_proj = _linear(config, d, self.num_kv_heads * h, ("embed", "heads"), rngs, bias)
        self.v_proj = _linear(config, d, self.num_kv_heads * h, ("embed", "heads"), rngs, bias)
        self.o_proj = _linear(config, self.num_heads * h, d, ("heads", "embed"), rngs, config.o_bias)
        self.attn_dropout = dropout(config.attention_dropout, rngs)

    def __call__(self, x, mask, cos_sin, layer_cache=None, cache_index=None, prefix_kv=None):
        """x (B, T, D); cos_sin (B, T, H) each; layer_cache optional (keys, values) each (B, S, K, H)."""
        q = self.q_proj(x).reshape(x.shape[:-1] + (self.num_heads, self.head_dim))
        k = self.k_proj(x).reshape(x.shape[:-1] + (self.num_kv_heads, self.head_dim))
        v = self.v_proj(x).reshape(x.shape[:-1] + (self.num_kv_heads, self.head_dim))
        q, k = apply_rotary(q, *cos_sin), apply_rotary(k, *cos_sin)
        new_cache = None
        if layer_cache is not None:
            cached_k, cached_v = layer_cache
            k = jax.lax.dynamic_update_slice_in_dim(cached_k, k.astype(cached_k.dtype), cache_index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cached_v, v.astype(cached_v.dtype), cache_index, axis=1)
            new_cache = (k, v)
        if prefix_kv is not None:  # the mask already has the prefix's P columns (they may slide out of view)
            k = jnp.concatenate([prefix_kv[0].astype(k.dtype), k], axis=1)
            v = jnp.concatenate([prefix_kv[1].astype(v.dtype), v], axis=1)
        out = attention(q, k, v, mask, dropout=self.attn_dropout)
        return self.o_proj(out.reshape(out.shape[:-2] + (-1,))), new_cache


class LlamaDecoderLayer(nnx.Module):
    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = GatedMlp(
            config.hidden_size, config.intermediate_size, act=config.hidden_act, use_bias=config.mlp_bias,
            stddev=config.initializer_range, dtype=config.compute_dtype, rngs=rngs,
        )

    def __call__(self, x, mask, cos_sin, layer_cache=None, cache_index=None, prefix_kv=None):
        h, new_cache = self.self_attn(self.input_layernorm(x), mask, cos_sin, layer_cache, cache_index, prefix_kv)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), new_cache


class LlamaModel(nnx.Module):
    """The bare decoder (HF ``LlamaModel``)."""

    task = "feature-extraction"

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed_tokens = Embed(
            config.vocab_size, config.hidden_size, stddev=config.initializer_range, dtype=config.compute_dtype,
            rngs=rngs,
        )
        self.layers = nnx.List([LlamaDecoderLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.remat = False  # set by the trainer (train.remat): recompute layer activations in backward
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
          prefix_kv: optional per-layer list of (keys, values), each (B, P, K, H),
            visible to every token (not stored in the cache). Default: from
            ``self.prefix_encoder`` when prefix tuning is applied.

        Returns:
          (hidden (B, T, D), updated cache or None).
        """
        batch, length = input_ids.shape
        if prefix_kv is None and self.prefix_encoder is not None:
            prefix_kv = self.prefix_encoder(batch)
        num_prefix = 0 if prefix_kv is None else prefix_kv[0][0].shape[1]
        if attention_mask is None:
            attention_mask = jnp.ones((batch, length), jnp.int32)
        attention_mask = attention_mask.astype(jnp.int32)
        if cache is None:
            if position_ids is None:
                position_ids = position_ids_from_mask(attention_mask, num_prefix)
            query_positions = key_positions = jnp.arange(length)
            valid = attention_mask.astype(bool)
        else:
            if position_ids is None:
                position_ids = position_ids_from_mask(attention_mask, cache.valid.sum(-1) + num_prefix)
            valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, attention_mask.astype(bool), cache.index, axis=1)
            query_positions, key_positions = cache.index + jnp.arange(length), jnp.arange(valid.shape[1])
        masks = {}
        for window in set(self.config.layer_windows):  # (B, 1, T, P + S)
            mask = causal_mask(query_positions, key_positions, window) & valid[:, None, None, :]
            if num_prefix:  # prefix slot j is HF cache position j, our slot i is P + i
                seen = jnp.arange(num_prefix)[None, :] > num_prefix + query_positions[:, None] - (window or 0)
                seen = jnp.ones_like(seen) if window is None else seen
                mask = jnp.concatenate([jnp.broadcast_to(seen, mask.shape[:2] + seen.shape), mask], axis=-1)
            masks[window] = mask
        inv_freq = rope_inverse_frequencies(self.config.attention_head_dim, self.config.rope_theta, self.config.scaling_dict)
        cos_sin = rotary_cos_sin(position_ids, inv_freq)
        x = self.embed_tokens(input_ids)
        new_keys, new_values = [], []
        for i, layer in enumerate(self.layers):
            layer_cache = None if cache is None else (cache.keys[i], cache.values[i])
            x, new_layer_cache = run_layer(
                layer, x, masks[self.config.layer_windows[i]], cos_sin, layer_cache, None if cache is None else cache.index,
                None if prefix_kv is None else prefix_kv[i], remat=self.remat,
            )
            x = constrain(x, ("batch", "length", "embed"))  # layer boundary; no-op outside a sharded step
            if cache is not None:
                new_keys.append(new_layer_cache[0])
                new_values.append(new_layer_cache[1])
        x = self.norm(x)
        if cache is None:
            return x, None
        return x, KVCache(jnp.stack(new_keys), jnp.stack(new_values), valid, cache.index + length)


class LlamaForCausalLM(nnx.Module):
    """Causal LM: logits (B, T, V) from ``lm_head``, or from ``embed_tokens`` when tied."""

    task = "causal-lm"
    head_modules = ()

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.model = LlamaModel(config, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = _linear(config, config.hidden_size, config.vocab_size, ("embed", "vocab"), rngs)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, cache=None, prefix_kv=None):
        """Returns (logits (B, T, V) float32, updated cache or None)."""
        hidden, cache = self.model(input_ids, attention_mask, position_ids, cache, prefix_kv)
        if self.config.tie_word_embeddings:
            logits = self.model.embed_tokens.attend(hidden)
        else:
            logits = self.lm_head(hidden)
        return logits.astype(jnp.float32), cache


class LlamaForSequenceClassification(nnx.Module):
    """Classifies from the last real token, like HF (rightmost token != pad id)."""

    task = "sequence-classification"
    head_modules = ("score",)

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.model = LlamaModel(config, rngs=rngs)
        self.score = _linear(config, config.hidden_size, config.num_labels, ("embed", None), rngs)

    def __call__(self, input_ids, attention_mask=None, position_ids=None, cache=None, prefix_kv=None):
        """Returns logits (B, num_labels)."""
        hidden, _ = self.model(input_ids, attention_mask, position_ids, None, prefix_kv)
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


LLAMA_TASKS: dict[str, type[nnx.Module]] = {
    cls.task: cls for cls in (LlamaModel, LlamaForCausalLM, LlamaForSequenceClassification)
}
