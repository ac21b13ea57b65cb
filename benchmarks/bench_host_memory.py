"""Train steps with and without ``keep_host_memory``, each setting in its own process, rounds interleaved.

``jaxkernel.train.host_memory.keep_host_memory`` (on by default in the trainer) keeps freed host
memory for reuse, so the scratch buffer XLA's CPU runtime allocates for every execution stops being
a fresh ``mmap`` that page-faults on first touch. The setting is process-wide and must come before
JAX starts, hence one process per setting; rounds alternate the processes (keep, default, keep, ...)
so load changes hit both alike. Each process builds ``bench_step.jaxkernel_step`` (the default
recipe's MiniLM step, LoRA or full fine-tune, batch 32), compiles it per length, then times
``--steps`` steps and counts minor page faults per step (``getrusage``).

    python benchmarks/bench_host_memory.py --lengths 32 128 --rounds 2 --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

SETTINGS = {"keep": "1", "default": "0"}


def worker(steps: int, lengths: list[int], methods: list[str]) -> None:
    import resource
    import time

    from jaxkernel.train.host_memory import keep_host_memory

    applied = keep_host_memory()  # reads JAXKERNEL_KEEP_HOST_MEMORY: before JAX starts
    import jax

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_step import jaxkernel_step, make_batch

    out = {"applied": applied}
    for method in methods:
        run = jaxkernel_step(method, "threefry2x32")
        for length in lengths:
            batch = make_batch(length)
            jax.block_until_ready(run(batch))
            jax.block_until_ready(run(batch))
            times, faults = [], []
            for _ in range(steps):
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t0 = time.perf_counter()
                jax.block_until_ready(run(batch))
                times.append(time.perf_counter() - t0)
                faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            out[f"{method} T={length}"] = {"times": times, "faults": faults}
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--methods", nargs="+", default=["lora", "none"], help="peft.method values (none = full)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.steps, args.lengths, args.methods)
    results = {name: {} for name in SETTINGS}
    for _ in range(args.rounds):
        for name, value in SETTINGS.items():
            env = {**os.environ, "JAXKERNEL_KEEP_HOST_MEMORY": value, "JAXKERNEL_CACHE_DIR": "off"}
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--steps", str(args.steps),
                   "--lengths", *map(str, args.lengths), "--methods", *args.methods]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
            out = json.loads(line[len("RESULT "):])
            assert out.pop("applied") == (value == "1"), f"{name}: keep_host_memory did not do what was asked"
            for variant, r in out.items():
                slot = results[name].setdefault(variant, {"times": [], "faults": []})
                slot["times"] += r["times"]
                slot["faults"] += r["faults"]
            print(f"  done: {name}", flush=True)
    print("\n| step (full = every parameter trained) | default: median ms | faults/step | keep: median ms | "
          "faults/step | keep / default |\n|---|---|---|---|---|---|")
    for variant in results["default"]:
        d, k = results["default"][variant], results["keep"][variant]
        dm, km = statistics.median(d["times"]), statistics.median(k["times"])
        name = variant.replace("none", "full")
        print(f"| {name} | {dm * 1e3:.0f} | {statistics.median(d['faults']):.0f} | {km * 1e3:.0f} | "
              f"{statistics.median(k['faults']):.0f} | {km / dm:.2f} |")


if __name__ == "__main__":
    main()
