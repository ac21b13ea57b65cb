"""Symmetric int8 weight quantization: pure functions and the int8 modules.

Convention (everywhere in ``jaxkernel.quant``): ``w ≈ q * scale`` with ``q`` int8
in [-127, 127] and ``scale`` float32 = absmax / 127, one scale per *output
channel* (the absmax is taken over the contracting axis), or one per group of
``group_size`` consecutive contracting entries. Rounding is to nearest (ties to
even), so ``|w - q * scale| <= scale / 2``. -128 is never produced: the grid is
symmetric, so negating ``q`` cannot overflow, and a W8A8 product of two int8
values is at most 127 * 127. A channel that is all zeros gets ``scale = 0`` and
``q = 0`` (no division by zero; it dequantizes to exact zeros).

Int8 weights and scales are stored as their own variable types (``Int8Weight``,
``QuantScale``), *not* ``nnx.Param``: optimizers built with ``wrt=nnx.Param`` or
``wrt=LoraParam`` never touch them, and they are ordinary nnx state for Orbax.

Example::

    q, scale = quantize_int8(kernel, axis=0)          # kernel (in, out) -> scale (1, out)
    w = dequantize(q, scale)                          # float32 (in, out)
    layer = Int8Linear.from_linear(linear)            # weight-only int8 drop-in for Linear
    y = layer(x)                                      # (B, T, in) -> (B, T, out)
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxkernel.models.layers import Axes, Embed, Linear, logical_param

Mode = Literal["weight_only", "w8a8"]
MODES: tuple[str, ...] = ("weight_only", "w8a8")
QMAX = 127


class Int8Weight(nnx.Variable):
    """An int8 weight tensor (frozen by type: not an ``nnx.Param``)."""


class QuantScale(nnx.Variable):
    """The float32 dequantization scale that goes with an ``Int8Weight``."""


def _annotated(cls, value: jax.Array, axes: Axes):
    if len(axes) != value.ndim:
        raise ValueError(f"axes {axes} do not match a {cls.__name__} of shape {value.shape}")
    return cls(value, out_sharding=tuple(axes), eager_sharding=False)


def _check_float(w, what: str) -> None:
    if not jnp.issubdtype(jnp.asarray(w).dtype, jnp.floating):
        raise TypeError(
            f"{what} has dtype {jnp.asarray(w).dtype}; int8 quantization takes a floating-point "
            "array (float32, bfloat16, float16)"
        )


def quantize_int8(w: jax.Array, axis: int | tuple[int, ...] = 0, group_size: int | None = None):
    """Symmetric absmax int8 quantization, ``w ≈ q * scale``.

    Args:
      w: floating-point array, e.g. a kernel (in, out) or activations (B, T, D).
      axis: the contracting axis (or axes) the absmax is taken over. For a kernel
        (in, out) the default ``axis=0`` gives one scale per output channel; for
        activations ``axis=-1`` gives one scale per token.
      group_size: optional; split the (single) ``axis`` into groups of this many
        entries, each with its own scale. Must divide ``w.shape[axis]``.

    Returns:
      ``(q, scale)``: ``q`` int8 with the shape of ``w``; ``scale`` float32 with
      the shape of ``w`` except ``1`` on ``axis`` (``w.shape[axis] // group_size``
      when grouped).

    Raises:
      TypeError: ``w`` is not floating point.
      ValueError: ``group_size`` does not divide the axis, or is used with several axes.
    """
    _check_float(w, "the array to quantize")
    w = jnp.asarray(w).astype(jnp.float32)
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    axes = tuple(a % w.ndim for a in axes)
    if group_size is not None:
        if len(axes) != 1:
            raise ValueError(f"group_size needs a single contracting axis, got axis={axis}")
        (a,) = axes
        n = w.shape[a]
        if group_size <= 0 or n % group_size:
            raise ValueError(
                f"group_size={group_size} does not divide axis {a} of size {n}; pick a divisor of {n} "
                "or group_size=None for one scale per channel"
            )
        grouped = w.reshape(w.shape[:a] + (n // group_size, group_size) + w.shape[a + 1:])
        q, scale = quantize_int8(grouped, axis=a + 1)
        return q.reshape(w.shape), jnp.squeeze(scale, a + 1)
    absmax = jnp.max(jnp.abs(w), axis=axes, keepdims=True)
    scale = absmax / QMAX
    safe = jnp.where(scale == 0, 1.0, scale)  # all-zero channel: q = 0, scale stays 0
    q = jnp.clip(jnp.round(w / safe), -QMAX, QMAX).astype(jnp.int8)
    return q, scale


def _expand_groups(scale: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Repeat each group's scale over its entries so it broadcasts against ``shape``."""
    for a, (s, n) in enumerate(zip(scale.shape, shape)):
        if s not in (1, n):
            if n % s:
                raise ValueError(f"scale shape {scale.shape} does not fit a tensor of shape {shape}")
            scale = jnp.repeat(scale, n // s, axis=a)
    return scale


def dequantize(q: jax.Array, scale: jax.Array, dtype=jnp.float32) -> jax.Array:
    """``q * scale`` in ``dtype``; grouped scales are expanded over their groups.

    Args:
      q: int8 array from ``quantize_int8``.
      scale: its scale; each axis is 1 (broadcast), the size of ``q``'s axis, or a
        divisor of it (groups of consecutive entries).
      dtype: output dtype.
    """
    if scale.ndim != q.ndim:
        raise ValueError(f"scale of shape {scale.shape} does not go with q of shape {q.shape}")
    w = q.astype(jnp.float32) * _expand_groups(scale.astype(jnp.float32), q.shape)
    return w.astype(dtype)


def _w8a8_forward(x, q, scale):
    """Per-token int8 activations times the int8 kernel, accumulated in int32."""
    xq, xs = quantize_int8(x, axis=-1)  # (..., i) int8, (..., 1)
    if scale.shape[0] == 1:
        acc = jax.lax.dot_general(  # (..., i) x (i, o) -> (..., o) in int32
            xq, q, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.int32
        )
        return acc.astype(jnp.float32) * xs * scale[0]
    groups = scale.shape[0]
    xg = xq.reshape(xq.shape[:-1] + (groups, -1))  # (..., G, i/G)
    qg = q.reshape((groups, -1) + q.shape[1:])  # (G, i/G, o)
    acc = jnp.einsum("...gi,gio->...go", xg, qg, preferred_element_type=jnp.int32)
    return (acc.astype(jnp.float32) * scale).sum(-2) * xs


@jax.custom_vjp
def w8a8_matmul(x: jax.Array, q: jax.Array, scale: jax.Array) -> jax.Array:
    """``x @ (q * scale)`` with ``x`` quantized per token on the fly (W8A8), float32 out.

    The backward pass is straight-through: ``dx = dy @ dequantize(q, scale).T``,
    so LoRA adapters below a W8A8 layer still get gradients. ``q`` and ``scale``
    get none (they are frozen).
    """
    return _w8a8_forward(x, q, scale)


def _w8a8_fwd(x, q, scale):
    return _w8a8_forward(x, q, scale), (q, scale, jnp.zeros((0,), x.dtype))  # empty: carries x's dtype


def _w8a8_bwd(res, dy):
    q, scale, x_like = res
    dx = jnp.einsum("...o,io->...i", dy, dequantize(q, scale)).astype(x_like.dtype)
    return dx, np.zeros(q.shape, jax.dtypes.float0), jnp.zeros_like(scale)


w8a8_matmul.defvjp(_w8a8_fwd, _w8a8_bwd)


def _after(q: jax.Array, x: jax.Array) -> jax.Array:
    """``q`` unchanged, but data-dependent on ``x`` (one scalar), fused into the conversion.

    XLA:CPU drops ``optimization_barrier`` early and schedules every layer's int8 -> float
    conversion at the start of the program, holding all the float kernels at once: the
    int8 model then peaks *above* the float one. Making the conversion depend on the
    layer's input keeps one layer's float kernel alive at a time. (``x != x`` is only
    true for NaN, where the output is NaN anyway.)
    """
    flag = jax.lax.stop_gradient(x.reshape(-1)[0])
    return jnp.where(flag != flag, jnp.zeros((), q.dtype), q)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"quantization mode {mode!r} is not supported; use one of {MODES}")


class Int8Linear(nnx.Module):
    """Drop-in for ``layers.Linear`` with an int8 kernel (in, out) and float scales.

    ``in_features``, ``out_features``, ``dtype``, ``bias`` and ``__call__(x)`` match
    ``Linear``, so a LoRA wrapper that calls ``base_layer(x)`` works unchanged.

    Modes:
      ``"weight_only"``: the kernel is dequantized inside the jitted matmul and
        the activations stay float (``dtype`` or float32). With per-channel scales
        the scale is applied to the output columns, which is the same product.
      ``"w8a8"``: activations are quantized per token on the fly and the matmul
        runs int8 x int8 -> int32 (``lax.dot_general``), then rescaled.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        axes: Axes,
        use_bias: bool = True,
        group_size: int | None = None,
        mode: Mode = "weight_only",
        dtype=None,
        rngs: nnx.Rngs | None = None,
    ):
        """Zero-initialised; fill with ``from_linear`` or by loading state."""
        _check_mode(mode)
        if group_size is not None and (group_size <= 0 or in_features % group_size):
            raise ValueError(f"group_size={group_size} does not divide in_features={in_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        self.mode = mode
        self.dtype = dtype
        groups = 1 if group_size is None else in_features // group_size
        self.kernel = _annotated(Int8Weight, jnp.zeros((in_features, out_features), jnp.int8), axes)
        self.scale = _annotated(QuantScale, jnp.zeros((groups, out_features), jnp.float32), (None, axes[-1]))
        self.bias = (
            logical_param(jnp.zeros((out_features,), jnp.float32), axes[-1:]) if use_bias else None
        )

    @classmethod
    def from_linear(cls, linear: Linear, *, mode: Mode = "weight_only", group_size: int | None = None) -> "Int8Linear":
        """Quantize a float ``Linear`` (its bias is shared, not copied)."""
        _check_float(linear.kernel[...], "Linear.kernel")
        axes = linear.kernel.get_metadata().get("out_sharding") or (None, None)
        layer = cls(
            linear.in_features, linear.out_features, axes=axes, use_bias=linear.bias is not None,
            group_size=group_size, mode=mode, dtype=linear.dtype,
        )
        q, scale = quantize_int8(linear.kernel[...], axis=0, group_size=group_size)
        layer.kernel[...] = q
        layer.scale[...] = scale
        if linear.bias is not None:
            layer.bias = linear.bias
        return layer

    def to_linear(self) -> Linear:
        """A float ``Linear`` holding the dequantized kernel (for export)."""
        axes = self.kernel.get_metadata().get("out_sharding") or (None, None)
        linear = Linear(
            self.in_features, self.out_features, axes=axes, use_bias=self.bias is not None,
            dtype=self.dtype, rngs=nnx.Rngs(0),
        )
        linear.kernel[...] = dequantize(self.kernel[...], self.scale[...])
        if self.bias is not None:
            linear.bias = logical_param(jnp.array(self.bias[...]), axes[-1:])
        return linear

    def __call__(self, x: jax.Array) -> jax.Array:
        q, scale = self.kernel[...], self.scale[...]
        out_dtype = self.dtype or jnp.result_type(x.dtype, jnp.float32)
        q = _after(q, x)
        if self.mode == "w8a8":
            y = w8a8_matmul(x, q, scale).astype(out_dtype)
        elif self.group_size is None:
            y = jnp.einsum("...i,io->...o", x.astype(out_dtype), q.astype(out_dtype))
            y = y * scale[0].astype(out_dtype)
        else:
            y = jnp.einsum("...i,io->...o", x.astype(out_dtype), dequantize(q, scale, out_dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        return y


class Int8Embed(nnx.Module):
    """Drop-in for ``layers.Embed`` with an int8 table (V, D) and one scale per row.

    A per-row scale is per output channel for ``attend`` (the tied LM head) too.
    Lookups and ``attend`` dequantize (weight-only) whatever ``mode`` the linears use.
    """

    def __init__(self, num_embeddings: int, features: int, *, axes: Axes = ("vocab", "embed"), dtype=None):
        self.num_embeddings = num_embeddings
        self.features = features
        self.dtype = dtype
        self.embedding = _annotated(Int8Weight, jnp.zeros((num_embeddings, features), jnp.int8), axes)
        self.scale = _annotated(QuantScale, jnp.zeros((num_embeddings, 1), jnp.float32), (axes[0], None))

    @classmethod
    def from_embed(cls, embed: Embed) -> "Int8Embed":
        _check_float(embed.embedding[...], "Embed.embedding")
        axes = embed.embedding.get_metadata().get("out_sharding") or (None, None)
        layer = cls(embed.num_embeddings, embed.features, axes=axes, dtype=embed.dtype)
        q, scale = quantize_int8(embed.embedding[...], axis=1)
        layer.embedding[...] = q
        layer.scale[...] = scale
        return layer

    def to_embed(self) -> Embed:
        axes = self.embedding.get_metadata().get("out_sharding") or (None, None)
        embed = Embed(self.num_embeddings, self.features, axes=axes, dtype=self.dtype, rngs=nnx.Rngs(0))
        embed.embedding[...] = dequantize(self.embedding[...], self.scale[...])
        return embed

    def __call__(self, ids: jax.Array) -> jax.Array:
        rows = jnp.take(self.embedding[...], ids, axis=0).astype(jnp.float32)  # (..., D)
        out = rows * jnp.take(self.scale[...], ids, axis=0)
        return out if self.dtype is None else out.astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or jnp.result_type(x.dtype, jnp.float32)
        logits = jnp.einsum("...D,VD->...V", x.astype(dtype), self.embedding[...].astype(dtype))
        return logits * self.scale[...][:, 0].astype(dtype)
