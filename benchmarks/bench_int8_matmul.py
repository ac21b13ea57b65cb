"""Matmul throughput on the default JAX device: bf16 vs int8 W8A8 vs int8 weight-only.

Meant for an accelerator (e.g. one H200: ``python benchmarks/bench_int8_matmul.py``);
on CPU use ``--sizes 512`` to check it runs. Each case is the exact kernel
``Int8Linear`` runs:

  bf16          x (M, K) bf16 @ w (K, N) bf16                       -> bf16
  w8a8          per-token int8 x, int8 w, lax.dot_general int32 acc -> rescaled f32
  weight-only   bf16 x @ int8 w converted in the jitted matmul      -> bf16 (scaled per column)

TFLOP/s counts 2*M*K*N per call (quantization overhead included in the int8 rows).

Usage::

    python benchmarks/bench_int8_matmul.py --sizes 4096,8192 --iters 50
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from flax import nnx

from jaxkernel.quant.int8 import Int8Linear, quantize_int8, w8a8_matmul


def _time(fn, *args, iters: int) -> float:
    fn(*args).block_until_ready()
    start = time.perf_counter()
    for _ in range(iters):
        out = fn(*args)
    out.block_until_ready()
    return (time.perf_counter() - start) / iters


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4096,8192", help="comma list of M=K=N")
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args(argv)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"{'M=K=N':>7} {'case':<12} {'ms':>9} {'TFLOP/s':>9} {'vs bf16':>8}")
    for n in (int(s) for s in args.sizes.split(",")):
        kx, kw = jax.random.split(jax.random.key(0))
        x = jax.random.normal(kx, (n, n), jnp.bfloat16)
        w = jax.random.normal(kw, (n, n), jnp.float32) * 0.02
        q, scale = quantize_int8(w, axis=0)
        wb = w.astype(jnp.bfloat16)
        layer = Int8Linear(n, n, axes=(None, None), use_bias=False, dtype=jnp.bfloat16)
        layer.kernel[...], layer.scale[...] = q, scale
        graphdef, state = nnx.split(layer)
        cases = {
            "bf16": (jax.jit(lambda x, w: x @ w), x, wb),
            "w8a8": (jax.jit(lambda x, q, s: w8a8_matmul(x, q, s)), x, q, scale),
            "weight-only": (jax.jit(lambda state, x: nnx.merge(graphdef, state)(x)), state, x),
        }
        base = None
        for name, (fn, *inputs) in cases.items():
            seconds = _time(fn, *inputs, iters=args.iters)
            base = base or seconds
            print(f"{n:>7} {name:<12} {1000 * seconds:9.3f} {2 * n**3 / seconds / 1e12:9.2f} {base / seconds:7.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
