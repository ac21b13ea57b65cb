"""DoRA, weight-decomposed LoRA (Liu et al. 2024), as PEFT's ``LoraConfig(use_dora=True)``.

The adapted weight is a learned magnitude per output channel times a unit direction::

    W' = m * (W + s A B) / ||W + s A B||_c        (norm of each output column of the (in, out) kernel)

``m`` is ``lora_magnitude_vector`` (PEFT's name; it starts at ``||W||_c``, so a fresh adapter
with ``lora_B = 0`` changes nothing). As in PEFT (DoRA paper, section 4.3) the norm is treated as
a constant in the backward pass, and the forward is computed without forming ``W'``::

    y = base(x) + (m / n - 1) * (x W) + (m / n) * s * (dropout(x) A B),    n = ||W + s A B||_c

(with dropout active, ``x W`` uses the dropped-out ``x``, as PEFT does). Merging writes ``W'``
into the kernel; the bias is untouched. The norm needs the base layer's float kernel: DoRA on an
int8 base is refused (use plain LoRA there).

Example::

    apply_lora(model, LoraConfig(r=8, alpha=16, target_modules=["query", "value"], use_dora=True))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxkernel.peft.lora import LoraLinear, LoraParam, _kernel_axes


class DoraMergeScale(nnx.Variable):
    """``m / n`` at merge time, kept (not trained, not exported) so that unmerging is exact."""


def float_kernel_or_error(base: nnx.Module, path: str) -> None:
    """Raise unless ``base`` holds a float ``kernel`` DoRA can take column norms of."""
    kernel = getattr(base, "kernel", None)
    if not isinstance(kernel, nnx.Variable) or not jnp.issubdtype(kernel.dtype, jnp.floating):
        raise ValueError(
            f"DoRA (use_dora=true) needs the float weights of {path} to normalise them per output channel, but "
            f"its base layer is a {type(base).__name__} (e.g. int8 weights): use plain LoRA (use_dora=false) on a "
            "quantized base, or apply DoRA to the float model"
        )


class DoraLinear(LoraLinear):
    """``LoraLinear`` plus PEFT's DoRA magnitude vector; same A, B, scale and dropout."""

    def __init__(self, base_layer: nnx.Module, **kwargs):
        super().__init__(base_layer, **kwargs)
        kernel = base_layer.kernel[...]
        out_axis = _kernel_axes(base_layer)[1]
        magnitude = jnp.linalg.norm(kernel.astype(jnp.float32) + self.delta_kernel(), axis=0)  # (out,)
        self.lora_magnitude_vector = LoraParam(
            magnitude.astype(self.lora_A.dtype), out_sharding=(out_axis,), eager_sharding=False
        )
        self.merge_scale = nnx.data(None)

    def weight_norm(self) -> jax.Array:
        """``||W + s A B||`` per output channel, (out,), held constant for gradients."""
        kernel = self.base_layer.kernel[...].astype(jnp.float32)
        return jax.lax.stop_gradient(jnp.linalg.norm(kernel + self.delta_kernel(), axis=0))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.base_layer(x)
        if self.merged:
            return y
        mag_scale = self.lora_magnitude_vector[...] / self.weight_norm()  # (out,)
        dropout_on = self.dropout is not None and not self.dropout.deterministic
        h = self.dropout(x) if dropout_on else x
        a, b, kernel = self.lora_A[...], self.lora_B[...], self.base_layer.kernel[...]
        dtype = getattr(self.base_layer, "dtype", None)
        if dtype is not None:  # mixed precision: compute like the base layer
            h, a, b, kernel = h.astype(dtype), a.astype(dtype), b.astype(dtype), kernel.astype(dtype)
            mag_scale = mag_scale.astype(dtype)
        lora = jnp.einsum("...r,ro->...o", jnp.einsum("...i,ir->...r", h, a), b)
        bias = getattr(self.base_layer, "bias", None)
        if dropout_on:  # x W of the dropped-out input, without the bias
            base = jnp.einsum("...i,io->...o", h, kernel)
        else:
            base = y - bias[...].astype(y.dtype) if isinstance(bias, nnx.Variable) else y
        return y + ((mag_scale - 1) * base + mag_scale * self.scale * lora).astype(y.dtype)

    def merge_into(self, kernel: nnx.Variable) -> None:
        scale = self.lora_magnitude_vector[...] / self.weight_norm()
        self.merge_scale = DoraMergeScale(scale)
        kernel[...] = ((kernel[...] + self.delta_kernel()) * scale[None, :]).astype(kernel.dtype)

    def unmerge_from(self, kernel: nnx.Variable) -> None:
        scale = self.merge_scale[...]
        kernel[...] = (kernel[...] / scale[None, :] - self.delta_kernel()).astype(kernel.dtype)
        self.merge_scale = None
