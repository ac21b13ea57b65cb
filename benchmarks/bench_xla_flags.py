"""The default LoRA step under XLA's CPU compiler flags, each in its own process, rounds interleaved.

XLA reads ``XLA_FLAGS`` once, when the backend starts, so every flag set needs a fresh process;
rounds alternate the processes (A B C ... A B C) so load changes hit every set alike. Each process
builds the default recipe's step (``profile_step.build``: MiniLM, LoRA r8 on query/value, dropout
0.1, batch 32), compiles it per length, then times ``--steps`` steps. Reported per flag set: the
median over all rounds, and the first step's loss (equal losses mean the flags left the numerics,
and likely the kernels, unchanged).

    python benchmarks/bench_xla_flags.py --lengths 32 128 --rounds 2 --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

FLAG_SETS = {
    "default": "",
    "oneDNN dot fusion": "--xla_cpu_experimental_onednn_fusion_type=LIBRARY_FUSION_TYPE_DOT",
    "XNNPACK dot+eltwise fusion": "--xla_cpu_experimental_xnn_fusion_type=LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE",
    "XNNPACK graph fusion": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "YNNPACK dot+eltwise+reduce": ("--xla_cpu_experimental_ynn_fusion_type="
                                   "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE"),
    "fast-compile preset": "--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_COMPILE",
}


def worker(steps: int, lengths: list[int]) -> None:
    import time

    import jax

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from profile_step import batch_of, build

    from jaxkernel.train.step import init_train_state, make_train_step

    model, tx, trainable = build(True)
    model_def, state = init_train_state(model, tx, trainable=trainable, seed=0)
    step = make_train_step(model_def, tx, donate=False)
    out = {}
    for length in lengths:
        batch = batch_of(length)
        t0 = time.perf_counter()
        _, metrics = jax.block_until_ready(step(state, batch))
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            jax.block_until_ready(step(state, batch))
            times.append(time.perf_counter() - t0)
        out[length] = {"compile_s": compile_s, "times": times, "loss": float(metrics["loss"])}
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.steps, args.lengths)
    results = {name: {} for name in FLAG_SETS}
    for _ in range(args.rounds):
        for name, flags in FLAG_SETS.items():
            env = {**os.environ, "XLA_FLAGS": flags, "JAXKERNEL_CACHE_DIR": "off"}
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--steps", str(args.steps),
                   "--lengths", *map(str, args.lengths)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
            for length, r in json.loads(line[len("RESULT "):]).items():
                slot = results[name].setdefault(int(length), {"times": [], "compile_s": [], "loss": r["loss"]})
                slot["times"] += r["times"]
                slot["compile_s"].append(r["compile_s"])
            print(f"  done: {name}", flush=True)
    print(f"\n| flags | length | median step (ms) | vs default | compile (s) | first-step loss |\n|---|---|---|---|---|---|")
    for length in args.lengths:
        base = statistics.median(results["default"][length]["times"])
        for name in FLAG_SETS:
            r = results[name][length]
            med = statistics.median(r["times"])
            print(f"| {name} | {length} | {med * 1e3:.0f} | {med / base:.2f} | {statistics.median(r['compile_s']):.1f} | "
                  f"{r['loss']:.7f} |")


if __name__ == "__main__":
    main()
