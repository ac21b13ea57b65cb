"""Prefix tuning: P trained key/value vectors per layer, prepended in attention.

A ``PrefixEncoder`` (same parameterisation as PEFT's) produces a flat table
(P, L * 2 * D): either directly (``prefix_projection=False``) or from a (P, D)
embedding through ``Linear(D, E) -> tanh -> Linear(E, 2 L D)``. Column layout is
PEFT's: ``(layer, key|value, head, head_dim)``. ``apply_prefix_tuning`` attaches it
as ``prefix_encoder`` on the bare encoder/decoder (``model.bert`` /
``model.transformer``), whose ``__call__`` then builds ``prefix_kv`` itself: no
caller changes, every head works, and the prefix stays an *input* to attention.

Positions: like HF models fed PEFT's ``past_key_values``, the P virtual tokens
occupy positions 0..P-1, so real tokens start at position P and a sequence may
hold at most ``max_positions - P`` tokens. This keeps jaxkernel and PEFT
adapters interchangeable (same logits both ways).

Example::

    apply_prefix_tuning(model, PrefixConfig(num_virtual_tokens=10))
    logits = model(input_ids, attention_mask)     # prefix applied automatically
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxkernel.models.registry import ModelDims, family_of
from jaxkernel.peft.lora import check_no_adapter, resolve_modules_to_save
from jaxkernel.peft.trainable import TrainableParam, mark_modules_to_save, method_config


class PrefixParam(TrainableParam):
    """Prefix-tuning encoder weights."""


@dataclasses.dataclass(frozen=True)
class PrefixConfig:
    """Prefix-tuning hyper-parameters, named like ``peft.PrefixTuningConfig``.

    Attributes:
      num_virtual_tokens: prefix length P (> 0).
      prefix_projection: reparameterise through a two-layer tanh MLP.
      encoder_hidden_size: that MLP's width E (default: the model width D).
      modules_to_save: as in ``LoraConfig`` (None: the task head for
        classification and QA, like PEFT).
    """

    num_virtual_tokens: int = 20
    prefix_projection: bool = False
    encoder_hidden_size: int | None = None
    modules_to_save: tuple[str, ...] | None = None

    def __post_init__(self):
        p = self.num_virtual_tokens
        if not isinstance(p, int) or isinstance(p, bool) or p <= 0:
            raise ValueError(f"num_virtual_tokens={p!r} must be a positive integer (e.g. 20)")
        if self.encoder_hidden_size is not None and self.encoder_hidden_size <= 0:
            raise ValueError(f"encoder_hidden_size={self.encoder_hidden_size!r} must be positive")
        if self.modules_to_save is not None:
            if isinstance(self.modules_to_save, str):
                raise ValueError(f"modules_to_save must be a list of module names, got the string {self.modules_to_save!r}")
            object.__setattr__(self, "modules_to_save", tuple(self.modules_to_save))


def _param(value: jax.Array, axes) -> PrefixParam:
    return PrefixParam(value, out_sharding=axes, eager_sharding=False)


class PrefixEncoder(nnx.Module):
    """Trainable prefix -> per-layer (keys, values), each (B, P, N, H).

    Logical axes (all meant to stay unmapped, i.e. replicated): ``prefix_tokens``,
    ``prefix_kv`` (the flat 2*L*D columns), ``prefix_embed`` and ``prefix_hidden``
    (projection MLP).
    """

    def __init__(
        self,
        num_virtual_tokens: int,
        num_layers: int,
        num_heads: int,
        head_dim: int,
        *,
        prefix_projection: bool = False,
        encoder_hidden_size: int | None = None,
        rngs: nnx.Rngs,
    ):
        self.num_virtual_tokens = num_virtual_tokens
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.prefix_projection = prefix_projection
        width = num_heads * head_dim
        flat = num_layers * 2 * width
        if prefix_projection:
            hidden = encoder_hidden_size or width
            self.encoder_hidden_size = hidden
            # torch defaults, as in PEFT: Embedding ~ N(0, 1), Linear ~ U(+-1/sqrt(fan_in)).
            self.embedding = _param(jax.random.normal(rngs.params(), (num_virtual_tokens, width)), ("prefix_tokens", "prefix_embed"))
            b1, b2 = 1 / math.sqrt(width), 1 / math.sqrt(hidden)
            self.w1 = _param(jax.random.uniform(rngs.params(), (width, hidden), minval=-b1, maxval=b1), ("prefix_embed", "prefix_hidden"))
            self.b1 = _param(jax.random.uniform(rngs.params(), (hidden,), minval=-b1, maxval=b1), ("prefix_hidden",))
            self.w2 = _param(jax.random.uniform(rngs.params(), (hidden, flat), minval=-b2, maxval=b2), ("prefix_hidden", "prefix_kv"))
            self.b2 = _param(jax.random.uniform(rngs.params(), (flat,), minval=-b2, maxval=b2), ("prefix_kv",))
        else:
            self.encoder_hidden_size = None
            self.embedding = _param(jax.random.normal(rngs.params(), (num_virtual_tokens, flat)), ("prefix_tokens", "prefix_kv"))

    def flat(self) -> jax.Array:
        """The (P, L * 2 * D) table PEFT saves as ``prompt_embeddings``."""
        table = self.embedding[...]
        if not self.prefix_projection:
            return table
        hidden = jnp.tanh(table @ self.w1[...] + self.b1[...])
        return hidden @ self.w2[...] + self.b2[...]

    def __call__(self, batch: int) -> list[tuple[jax.Array, jax.Array]]:
        """Per-layer (keys, values), each (B, P, N, H), for ``prefix_kv=``."""
        p, n, h = self.num_virtual_tokens, self.num_heads, self.head_dim
        kv = self.flat().reshape(p, self.num_layers, 2, n, h)
        return [
            tuple(jnp.broadcast_to(kv[None, :, layer, j], (batch, p, n, h)) for j in (0, 1))
            for layer in range(self.num_layers)
        ]


def base_model_of(model: nnx.Module) -> nnx.Module:
    """The bare encoder/decoder inside a task model (or the model itself)."""
    return family_of(model).base_model(model)


def model_dims(model: nnx.Module) -> ModelDims:
    """Sizes of ``model`` from the registry; the prefix holds ``kv_heads`` heads per layer."""
    return family_of(model).dims(model.config)


def apply_prefix_tuning(model: nnx.Module, config, *, seed: int = 0) -> nnx.Module:
    """Attach a trainable prefix to ``model``, in place; its forward then uses it.

    Args:
      model: a jaxkernel BERT or GPT-2 model (any head).
      config: a ``PrefixConfig`` (or the run config's ``peft`` section): prefix length,
        optional projection, modules_to_save.
      seed: initialises the prefix encoder.

    Returns:
      ``model``; ``model.peft_config`` holds ``config``.

    Raises:
      ValueError: the prefix leaves no room in the position budget, or an
        adapter is already present.
    """
    check_no_adapter(model, "prefix")
    config = method_config(PrefixConfig, config)
    base = base_model_of(model)
    dims = model_dims(model)
    if config.num_virtual_tokens >= dims.positions:
        raise ValueError(
            f"num_virtual_tokens={config.num_virtual_tokens} leaves no room for real tokens: the prefix takes "
            f"positions 0..{config.num_virtual_tokens - 1} of the model's {dims.positions}; use a shorter prefix"
        )
    base.prefix_encoder = PrefixEncoder(
        config.num_virtual_tokens, dims.layers, dims.kv_heads, dims.head_dim,
        prefix_projection=config.prefix_projection, encoder_hidden_size=config.encoder_hidden_size,
        rngs=nnx.Rngs(params=seed),
    )
    mark_modules_to_save(model, resolve_modules_to_save(model, config.modules_to_save))
    model.peft_config = config
    return model
