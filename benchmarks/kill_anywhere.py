"""Kill anywhere, lose nothing: SIGKILL a training run N times at random points, resume each time,
and require the end state to equal an uninterrupted run's bit for bit.

Runs the default NER preset (``configs/bert_ner_lora.yaml``: MiniLM + LoRA on WikiANN) with a short
step budget and small data, once straight through and once with ``--kills`` SIGKILLs. Each kill is
either injected at a chosen point through the trainer's ``JAXKERNEL_FAULT`` hook (during a train
step, during evaluation, while an async checkpoint is being written, between a finished checkpoint
and the metrics flush, after both) or sent from outside after a random delay. After every kill each
finished checkpoint directory must read; at the end the parameters, the optimizer state, the step,
the RNG and the logged loss/metric curve (``metrics.jsonl`` without timings) must equal the
straight run's exactly. Not a CI test (minutes per kill on a small CPU):
``tests/test_kill_points.py`` keeps three chosen kills on a tiny model.

    python benchmarks/kill_anywhere.py                      # 20 kills
    python benchmarks/kill_anywhere.py --kills 4 --steps 12 --workdir /tmp/kills
    python benchmarks/kill_anywhere.py --config path.yaml --override model.path=... (any preset)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMING_KEYS = ("tokens_per_s", "seconds", "samples_per_s", "steps_per_s")
INJECTED = ("kill_in_step", "kill_in_eval", "kill_during_save", "kill_before_flush", "kill_after_save")


def ner_overrides(steps: int, run_dir: Path) -> list[str]:
    """The default preset shrunk to a few minutes: small data, frequent eval and checkpoints."""
    return [
        f"train.steps={steps}", "train.batch_size=8", f"train.eval_every={max(2, steps // 3)}",
        "data.max_train_examples=400", "data.max_eval_examples=48",
        f"checkpoint.every={max(1, steps // 4)}", "checkpoint.keep_last=2", "checkpoint.async_save=true",
        "logging.every=1", "logging.progress_bar=false", "logging.tensorboard=false",
        f"train.run_dir={run_dir}",
    ]


def write_config(config_path: Path, overrides: list[str], out: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from jaxkernel.config import config_to_dict, load_config
    import yaml

    config = load_config(config_path, overrides)
    out.write_text(yaml.safe_dump(config_to_dict(config)))
    return out


def train_command(config_file: Path) -> list[str]:
    return [sys.executable, "-m", "jaxkernel.cli", "train", str(config_file)]


def child_env(fault: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXKERNEL_FAULT")}
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    if fault:
        env["JAXKERNEL_FAULT"] = fault
    return env


def saved_steps(run_dir: Path) -> list[int]:
    directory = run_dir / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def check_checkpoints_readable(run_dir: Path) -> list[str]:
    """Restore every finished step of ``run_dir`` (no target: raw arrays); the failures, if any."""
    import orbax.checkpoint as ocp

    problems = []
    for step in saved_steps(run_dir):
        try:
            with ocp.CheckpointManager(str(run_dir / "checkpoints"), item_names=("state", "meta"),
                                       options=ocp.CheckpointManagerOptions(create=False)) as manager:
                manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                              meta=ocp.args.JsonRestore()))
        except Exception as err:  # noqa: BLE001 - report every unreadable step
            problems.append(f"step {step}: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
    return problems


def final_state(run_dir: Path) -> dict:
    """Flat path -> numpy array of the newest checkpoint's state (params, opt_state, step, rng)."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    step = saved_steps(run_dir)[-1]
    with ocp.CheckpointManager(str(run_dir / "checkpoints"), item_names=("state", "meta"),
                               options=ocp.CheckpointManagerOptions(create=False)) as manager:
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(state)}


def curve(run_dir: Path) -> list[dict]:
    """metrics.jsonl without compile records and wall-clock fields: what must match exactly."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("split") == "compile":
            continue
        out.append({k: v for k, v in record.items() if k not in TIMING_KEYS})
    return out


def compare(straight: Path, killed: Path) -> list[str]:
    """What differs between two finished run directories (empty = bit for bit equal)."""
    import numpy as np

    problems = []
    a, b = curve(straight), curve(killed)
    if a != b:
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        problems.append(f"metrics curves differ at record {first}: {a[first:first + 1]} vs {b[first:first + 1]} "
                        f"({len(a)} vs {len(b)} records)")
    sa, sb = final_state(straight), final_state(killed)
    if sa.keys() != sb.keys():
        problems.append(f"state trees differ: {sorted(set(sa) ^ set(sb))[:5]}")
    for key in sorted(set(sa) & set(sb)):
        if sa[key].shape != sb[key].shape or not np.array_equal(sa[key], sb[key]):
            problems.append(f"state differs at {key}")
    return problems


def pick_fault(rng: random.Random, restored: int, total: int, eval_every: int, ckpt_every: int) -> str | None:
    """An injected kill point that this attempt will reach (None: use an external timed kill)."""
    later = range(restored + 1, total + 1)
    options = {"kill_in_step": list(later)}
    evals = [s for s in later if s % eval_every == 0 or s == total]
    saves = [s for s in later if s % ckpt_every == 0 or s == total]
    if evals:
        options["kill_in_eval"] = evals
    for point in ("kill_during_save", "kill_before_flush", "kill_after_save"):
        if saves:
            options[point] = saves
    point = rng.choice(sorted(options))
    return f"{point}:{rng.choice(options[point])}"


def run(args) -> int:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kill-anywhere-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in ("straight", "killed"):
        if (work / name).exists():
            shutil.rmtree(work / name)
    rng = random.Random(args.seed)
    overrides = lambda run_dir: ner_overrides(args.steps, run_dir) + list(args.override)  # noqa: E731
    straight_cfg = write_config(args.config, overrides(work / "straight"), work / "straight.yaml")
    killed_cfg = write_config(args.config, overrides(work / "killed"), work / "killed.yaml")
    from jaxkernel.config import load_config

    cfg = load_config(killed_cfg)
    total, eval_every, ckpt_every = cfg.train.steps, cfg.train.eval_every or cfg.train.steps, cfg.checkpoint.every

    t0 = time.perf_counter()
    done = subprocess.run(train_command(straight_cfg), env=child_env(None), cwd=REPO, capture_output=True, text=True)
    straight_s = time.perf_counter() - t0
    if done.returncode != 0:
        print(done.stderr[-4000:])
        return 2
    print(f"straight run: {straight_s:.0f} s, {total} steps", flush=True)

    log, kills, problems, cycles = [], 0, [], 0

    def finish_cycle() -> list[str] | None:
        """Resume the killed run to its end, compare it with the straight run, and start the next one afresh."""
        final = subprocess.run(train_command(killed_cfg), env=child_env(None), cwd=REPO, capture_output=True, text=True)
        if final.returncode != 0:
            print(final.stderr[-4000:])
            return None
        found = compare(work / "straight", work / "killed") + check_checkpoints_readable(work / "killed")
        print(json.dumps({"cycle_end": cycles + 1, "after_kill": kills, "problems": found}), flush=True)
        shutil.rmtree(work / "killed")
        return found

    while kills < args.kills:
        restored = max(saved_steps(work / "killed"), default=0)
        if restored >= total:  # every step is saved: nothing left to kill in this run
            found = finish_cycle()
            if found is None:
                return 2
            problems += found
            cycles += 1
            continue
        external = rng.random() < args.external_fraction
        fault = None if external else pick_fault(rng, restored, total, eval_every, ckpt_every)
        proc = subprocess.Popen(train_command(killed_cfg), env=child_env(fault), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        how = fault
        if external:
            delay = rng.uniform(0.2, 1.0) * straight_s
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
            how = f"external SIGKILL after {delay:.0f} s"
        _, err = proc.communicate()
        killed = proc.returncode == -signal.SIGKILL
        unreadable = check_checkpoints_readable(work / "killed")
        entry = {"kill": kills + 1, "how": how, "killed": killed, "rc": proc.returncode,
                 "restored_from": restored, "checkpoints_after": saved_steps(work / "killed"),
                 "unreadable": unreadable}
        log.append(entry)
        print(json.dumps(entry), flush=True)
        if unreadable:
            print("UNREADABLE CHECKPOINT", unreadable)
            return 1
        if proc.returncode not in (0, -signal.SIGKILL):
            print(err[-4000:])
            return 2
        if killed:
            kills += 1
        elif proc.returncode == 0:  # finished before the kill landed: check this run, start another
            problems += compare(work / "straight", work / "killed")
            cycles += 1
            shutil.rmtree(work / "killed")
    found = finish_cycle()
    if found is None:
        return 2
    problems += found
    cycles += 1
    verdict = (f"{kills}/{kills} exact ({cycles} resumed runs each equal to the straight run)" if not problems
               else f"MISMATCH after {kills} kills: {problems[:10]}")
    print(verdict)
    (work / "kill_log.json").write_text(json.dumps({"kills": log, "verdict": verdict, "problems": problems},
                                                   indent=2))
    return 0 if not problems else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--external-fraction", type=float, default=0.25,
                   help="share of kills sent from outside after a random delay (the rest are injected)")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "bert_ner_lora.yaml")
    p.add_argument("--override", action="append", default=[], help="extra section.key=value overrides")
    p.add_argument("--workdir", type=Path, default=None)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
