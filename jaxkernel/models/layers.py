"""Building blocks whose parameters carry logical axis names.

Every weight is an ``nnx.Param`` whose ``out_sharding`` metadata holds *logical*
axis names (``("embed", "mlp")``); ``jaxkernel.sharding.rules`` later maps them to
mesh axes. Eager sharding is off so models build anywhere, with or without a mesh.

Einsum letter legend used across ``jaxkernel.models``:

    B batch   T query length   S key length   D model width   N heads
    H head dim   F MLP width   V vocab   L labels
    K key/value heads (grouped-query attention)   G query heads per key/value head (N = K * G)

Example::

    dense = Linear(384, 1536, axes=("embed", "mlp"), rngs=nnx.Rngs(0))
    y = dense(x)  # (B, T, 384) -> (B, T, 1536)
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
from flax import nnx

Axes = tuple[str | None, ...]


def logical_param(value: jax.Array, axes: Axes) -> nnx.Param:
    """An ``nnx.Param`` annotated with logical axis names (no eager sharding)."""
    if len(axes) != value.ndim:
        raise ValueError(f"axes {axes} do not match a parameter of shape {value.shape}")
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def normal_init(stddev: float) -> Callable:
    return jax.nn.initializers.normal(stddev)


class Linear(nnx.Module):
    """``y = x @ kernel + bias`` with kernel shaped (in, out) like Flax/Conv1D.

    ``dtype`` is the compute dtype (e.g. bf16 for mixed precision); parameters
    stay in ``param_dtype``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        axes: Axes,
        use_bias: bool = True,
        stddev: float = 0.02,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.in_features = in_features
        self.out_features = out_features
        self.dtype = dtype
        kernel = normal_init(stddev)(rngs.params(), (in_features, out_features), param_dtype)
        self.kernel = logical_param(kernel, axes)
        self.bias = logical_param(jnp.zeros((out_features,), param_dtype), axes[-1:]) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...]
        if self.dtype is not None:
            x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        y = jnp.einsum("...i,io->...o", x, kernel)
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        return y


class Embed(nnx.Module):
    """Lookup table (V, D); ``attend`` reuses it as a tied output projection."""

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        axes: Axes = ("vocab", "embed"),
        stddev: float = 0.02,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.num_embeddings = num_embeddings
        self.features = features
        self.dtype = dtype
        table = normal_init(stddev)(rngs.params(), (num_embeddings, features), param_dtype)
        self.embedding = logical_param(table, axes)

    def __call__(self, ids: jax.Array) -> jax.Array:
        out = jnp.take(self.embedding[...], ids, axis=0)
        return out if self.dtype is None else out.astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        table = self.embedding[...]
        if self.dtype is not None:
            x, table = x.astype(self.dtype), table.astype(self.dtype)
        return jnp.einsum("...D,VD->...V", x, table)


class LayerNorm(nnx.Module):
    """LayerNorm computed in float32 whatever the activation dtype (bf16 safe)."""

    def __init__(self, features: int, *, eps: float, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.eps = eps
        self.scale = logical_param(jnp.ones((features,), param_dtype), ("norm",))
        self.bias = logical_param(jnp.zeros((features,), param_dtype), ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


def _gelu_exact(x):
    return jax.nn.gelu(x, approximate=False)


def _gelu_tanh(x):
    return jax.nn.gelu(x, approximate=True)


def _quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": _gelu_exact,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "quick_gelu": _quick_gelu,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


class RMSNorm(nnx.Module):
    """Root-mean-square norm (Llama, Mistral, Qwen2): ``x / rms(x) * scale``, no mean, no bias.

    Computed in float32 and cast back before the scale, exactly like HF's ``LlamaRMSNorm``.
    """

    def __init__(self, features: int, *, eps: float, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.eps = eps
        self.scale = logical_param(jnp.ones((features,), param_dtype), ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * y.astype(x.dtype)


class GatedMlp(nnx.Module):
    """Gated feed-forward ``down(act(gate(x)) * up(x))`` (SwiGLU with ``act=silu``).

    Attribute names are HF's (``gate_proj``, ``up_proj``, ``down_proj``), shared by
    Llama, Mistral, Qwen2 and most later decoders.
    """

    def __init__(self, features: int, hidden: int, *, act: str = "silu", use_bias: bool = False,
                 stddev: float = 0.02, dtype=None, rngs: nnx.Rngs):
        if act not in ACTIVATIONS:
            raise ValueError(f"activation {act!r} is not supported; use one of {sorted(ACTIVATIONS)}")
        init = dict(use_bias=use_bias, stddev=stddev, dtype=dtype, rngs=rngs)
        self.gate_proj = Linear(features, hidden, axes=("embed", "mlp"), **init)
        self.up_proj = Linear(features, hidden, axes=("embed", "mlp"), **init)
        self.down_proj = Linear(hidden, features, axes=("mlp", "embed"), **init)
        self.act = ACTIVATIONS[act]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))  # (B, T, F) -> (B, T, D)


# The sharding package installs a function here while it traces a sharded step; models
# only call ``constrain`` and so import nothing from ``jaxkernel.sharding``.
_CONSTRAINT: contextvars.ContextVar = contextvars.ContextVar("jaxkernel_activation_constraint", default=None)


@contextlib.contextmanager
def activation_constraint(fn: Callable[[jax.Array, Axes], jax.Array] | None) -> Iterator[None]:
    """Make ``constrain`` call ``fn(x, logical_axes)`` while tracing (None: no-op)."""
    token = _CONSTRAINT.set(fn)
    try:
        yield
    finally:
        _CONSTRAINT.reset(token)


def constrain(x: jax.Array, logical_axes: Axes) -> jax.Array:
    """Pin an activation's sharding at a layer boundary; a no-op outside a sharded step.

    Example: ``hidden = constrain(hidden, ("batch", "length", "embed"))``.
    """
    fn = _CONSTRAINT.get()
    return x if fn is None else fn(x, logical_axes)


# Set by ``capture_layer_outputs``: a list that ``run_layer`` appends each layer's output to
# (distillation's hidden-state loss reads them; models need no output_hidden_states flag).
_LAYER_OUTPUTS: contextvars.ContextVar = contextvars.ContextVar("jaxkernel_layer_outputs", default=None)


@contextlib.contextmanager
def capture_layer_outputs() -> Iterator[list]:
    """Collect the hidden state (B, T, D) every transformer layer outputs while tracing, in order."""
    outputs: list = []
    token = _LAYER_OUTPUTS.set(outputs)
    try:
        yield outputs
    finally:
        _LAYER_OUTPUTS.reset(token)


def run_layer(layer: nnx.Module, *args, remat: bool = False):
    """Call one transformer layer; with ``remat`` its activations are recomputed in the
    backward pass instead of stored (``jax.checkpoint``): less memory, ~1/3 more compute."""
    out = _run_layer(layer, *args, remat=remat)
    sink = _LAYER_OUTPUTS.get()
    if sink is not None:
        sink.append(out[0] if isinstance(out, tuple) else out)  # decoders return (hidden, cache)
    return out


def _run_layer(layer: nnx.Module, *args, remat: bool = False):
    if not remat:
        return layer(*args)
    # A pure function of the layer's state: RNG-counter updates inside are dropped, which is
    # safe because every Dropout owns its stream and the train step re-seeds streams per step.
    graphdef, state = nnx.split(layer)

    def pure(state, *inputs):
        return nnx.merge(graphdef, state)(*inputs)

    return jax.checkpoint(pure)(state, *args)
