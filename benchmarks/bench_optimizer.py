"""The optimizer update alone on MiniLM's 22.6 M parameters: optax's clip vs jaxkernel's, and PyTorch's AdamW.

A full fine-tune step updates every parameter: global-norm clipping (1.0), then AdamW (wd 0.01, no
decay on biases and norms in JAX; PyTorch's ``AdamW`` decays all). Variants, one process, rounds
interleaved (medians, ms):

* ``optax clip + adamw``: ``optax.chain(optax.clip_by_global_norm, optax.adamw)``;
* ``jaxkernel clip + adamw``: ``jaxkernel.train.clipping.clip_by_global_norm`` (one scalar multiply
  per element, fused into Adam's moment updates) in the same chain: what ``build_optimizer`` makes;
* ``adamw, no clip``: the floor the clip should add little to;
* ``torch clip_grad_norm_ + AdamW``: eager PyTorch, its default (for-each) implementation.

The JAX updates are jitted with the optimizer state and parameters donated, returned in the order
they came in (a mismatched order makes XLA copy every donated buffer).

    python benchmarks/bench_optimizer.py --rounds 5 --steps 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

D, F, LAYERS, VOCAB, LABELS = 384, 1536, 6, 30522, 7


def minilm_shapes() -> list[tuple[int, ...]]:
    shapes = [(VOCAB, D), (512, D), (2, D), (D,), (D,)]
    for _ in range(LAYERS):
        shapes += [(D, D), (D,)] * 4 + [(D,), (D,), (D, F), (F,), (F, D), (D,), (D,), (D,)]
    return shapes + [(D, LABELS), (LABELS,)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import torch

    from jaxkernel.train.clipping import clip_by_global_norm

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s, dtype=np.float32) for s in minilm_shapes()]
    grads = [rng.standard_normal(s, dtype=np.float32) * 1e-2 for s in minilm_shapes()]
    print(f"{sum(p.size for p in params):,} parameters in {len(params)} arrays, jax {jax.__version__}, "
          f"torch {torch.__version__}, {len(os.sched_getaffinity(0))} cores", flush=True)
    schedule = optax.linear_schedule(1e-3, 0.0, 10_000)
    no_decay = lambda tree: jax.tree.map(lambda x: x.ndim > 1, tree)  # noqa: E731

    def jax_update(tx):
        g = [jnp.asarray(x) for x in grads]
        holder = {"p": [jnp.asarray(x) for x in params]}
        holder["o"] = tx.init(holder["p"])

        def update(g, opt_state, p):
            updates, opt_state = tx.update(g, opt_state, p)
            return opt_state, optax.apply_updates(p, updates)

        update = jax.jit(update, donate_argnums=(1, 2))

        def run():
            holder["o"], holder["p"] = update(g, holder["o"], holder["p"])
            return holder["p"]

        return run

    def torch_update():
        ps = [torch.nn.Parameter(torch.from_numpy(x.copy())) for x in params]
        for p, g in zip(ps, grads):
            p.grad = torch.from_numpy(g.copy())
        opt = torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01)

        def run():
            torch.nn.utils.clip_grad_norm_(ps, 1.0)
            opt.step()

        return run

    variants = {
        "optax clip + adamw": jax_update(optax.chain(optax.clip_by_global_norm(1.0),
                                                     optax.adamw(schedule, weight_decay=0.01, mask=no_decay))),
        "jaxkernel clip + adamw": jax_update(optax.chain(clip_by_global_norm(1.0),
                                                         optax.adamw(schedule, weight_decay=0.01, mask=no_decay))),
        "adamw, no clip": jax_update(optax.adamw(schedule, weight_decay=0.01, mask=no_decay)),
        "torch clip_grad_norm_ + AdamW": torch_update(),
    }
    for run in variants.values():
        jax.block_until_ready(run())
    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            for _ in range(args.steps):
                t0 = time.perf_counter()
                jax.block_until_ready(run())
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["optax clip + adamw"])
    print("\n| update | median (ms) | min (ms) | vs optax clip + adamw |\n|---|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t) * 1e3:.1f} | {min(t) * 1e3:.1f} | {statistics.median(t) / base:.2f} |")


if __name__ == "__main__":
    main()
