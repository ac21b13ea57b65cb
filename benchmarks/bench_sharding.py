"""Compile time and step time of the sharded train step, per preset, on a simulated mesh.

By default it runs on 8 *simulated* CPU devices (``--xla_force_host_platform_device_count``):
they share the same CPU cores, so the step times only show the partitioning and
collective **overhead** of each preset relative to one device, never a speed-up.
Run it on a TPU VM / multi-GPU host (``--devices real``) for meaningful step times.

Each row: a GPT-2-shaped causal LM (``--width``, ``--layers``), full fine-tune or
LoRA (``--lora``), AdamW, global batch ``--batch`` x ``--seq``:

  compile s   ``jit(...).lower(...).compile()`` wall time
  step ms     median wall time of ``--iters`` steps after one warm-up
  tokens/s    batch * seq / step time
  collectives all-gather / all-reduce / reduce-scatter / all-to-all counts in the HLO

Usage::

    python benchmarks/bench_sharding.py                       # all presets, 8 simulated devices
    python benchmarks/bench_sharding.py --lora --iters 20 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time

PRESET_MESHES = {
    "single": None,
    "dp": ((8, 1, 1), "dp"),
    "fsdp": ((1, 8, 1), "fsdp"),
    "tp": ((2, 1, 4), "tp"),
    "fsdp_tp": ((1, 2, 4), "fsdp_tp"),
    "dp_fsdp_tp": ((2, 2, 2), "fsdp_tp"),
}


def _parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", default="8", help="number of simulated CPU devices, or 'real'")
    p.add_argument("--presets", default=",".join(PRESET_MESHES))
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--lora", action="store_true", help="LoRA r=8 on c_attn and c_fc instead of full fine-tuning")
    p.add_argument("--json", default=None, help="also write the rows here")
    return p.parse_args()


def main() -> int:
    args = _parse()
    if args.devices != "real":
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import numpy as np
    import optax
    from flax import nnx

    from jaxkernel.models.gpt2 import Gpt2Config, Gpt2LMHeadModel
    from jaxkernel.peft import LoraConfig, apply_lora, trainable_filter
    from jaxkernel.sharding.mesh import MeshConfig, make_mesh
    from jaxkernel.sharding.placement import create_sharded, shard_batch
    from jaxkernel.train.step import init_train_state, make_train_step

    config = Gpt2Config(vocab_size=args.vocab, n_embd=args.width, n_layer=args.layers, n_head=args.heads,
                        n_positions=max(args.seq, 64))

    def build():
        model = Gpt2LMHeadModel(config, rngs=nnx.Rngs(0))
        return apply_lora(model, LoraConfig(r=8, alpha=16, target_modules=["c_attn", "c_fc"])) if args.lora else model

    rng = np.random.RandomState(0)
    host_batch = {"input_ids": rng.randint(0, args.vocab, (args.batch, args.seq)).astype(np.int32),
                  "attention_mask": np.ones((args.batch, args.seq), np.int32)}
    rows = []
    print(f"{jax.device_count()} {jax.devices()[0].platform} devices; GPT-2 {args.width}x{args.layers}, "
          f"{'LoRA' if args.lora else 'full'}, batch {args.batch}x{args.seq}"
          + ("  (simulated devices share the CPU: times show overhead, not speed-up)" if args.devices != "real" else ""))
    print(f"{'preset':<12} {'mesh':<10} {'compile s':>9} {'step ms':>9} {'tokens/s':>10}  collectives (ag/ar/rs/a2a)")
    for name in args.presets.split(","):
        spec = PRESET_MESHES[name]
        tx = optax.adamw(1e-4)
        if spec is None:
            mesh, preset, model, batch = None, None, build(), {k: jax.numpy.asarray(v) for k, v in host_batch.items()}
        else:
            shape, preset = spec
            mesh = make_mesh(MeshConfig(shape))
            model = create_sharded(build, mesh, preset)
            batch = shard_batch(host_batch, mesh)
        model_def, state = init_train_state(model, tx, trainable=trainable_filter(model), mesh=mesh, rules=preset)
        step = make_train_step(model_def, tx, donate=True)
        start = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        compile_s = time.perf_counter() - start
        hlo = compiled.as_text()
        counts = [len(re.findall(rf"\b{op}(-start)?\(", hlo)) for op in ("all-gather", "all-reduce", "reduce-scatter", "all-to-all")]
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times = []
        for _ in range(args.iters):
            start = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
        step_s = statistics.median(times)
        row = dict(preset=name, mesh=None if spec is None else list(spec[0]), compile_s=round(compile_s, 2),
                   step_ms=round(step_s * 1e3, 1), tokens_per_s=round(args.batch * args.seq / step_s),
                   collectives=dict(zip(("all_gather", "all_reduce", "reduce_scatter", "all_to_all"), counts)),
                   loss=float(metrics["loss"]))
        rows.append(row)
        mesh_txt = "1 device" if spec is None else "x".join(map(str, spec[0]))
        print(f"{name:<12} {mesh_txt:<10} {compile_s:>9.2f} {step_s * 1e3:>9.1f} {row['tokens_per_s']:>10}  "
              f"{'/'.join(map(str, counts))}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
