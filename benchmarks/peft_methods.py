"""Every PEFT method side by side on NER: trainable parameters, optimizer bytes, step time, F1.

One run trains MiniLM-L6 (the packaged all-MiniLM-L6-v2) on WikiANN-en
(``../shared/data/wikiann-en``) for the same fixed number of optimizer steps with each method,
through the real trainer (``Trainer(load_config("configs/bert_ner_lora.yaml", overrides)).fit()``),
then reports, per method:

- trainable / total parameters (``count_parameters``),
- optimizer bytes: the train state's ``opt_state`` (AdamW moments; AdaLoRA adds its importance
  EMAs and masks, which live there too),
- step time: median wall time of ``--time-steps`` extra train steps on one batch of the longest
  bucket, after compilation (``block_until_ready`` on each),
- test F1 (seqeval entity F1, the trainer's own evaluation) after ``--steps`` steps.

Methods: LoRA, rsLoRA, DoRA (r=8, q/v), IA3 (PEFT's BERT defaults), AdaLoRA (init_r=12 ->
target_r=8, q/v), Houlsby and Pfeiffer bottleneck adapters (reduction 16), prefix tuning
(20 virtual tokens) and full fine-tuning, each at its preset learning rate.

    python benchmarks/peft_methods.py --steps 600                 # the comparison (writes --out)
    python benchmarks/peft_methods.py --smoke                     # 2 steps on a few examples: it runs
    python benchmarks/peft_methods.py --methods lora,adalora --steps 300

Results are machine-dependent: the table in docs/peft.md names the machine and the command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "bert_ner_lora.yaml"

METHODS = {  # name -> overrides of the LoRA preset (r=8, alpha=16, dropout 0.1, q/v, lr 1e-3)
    "LoRA": [],
    "rsLoRA": ["peft.use_rslora=true"],
    "DoRA": ["peft.use_dora=true"],
    "IA3": ["peft.method=ia3", "peft.target_modules=null", "peft.dropout=0.0", "optimizer.learning_rate=3e-3",
            "optimizer.weight_decay=0.0"],
    "AdaLoRA": ["peft.method=adalora", "peft.init_r=12", "peft.target_r=8", "peft.alpha=32", "peft.orth_reg_weight=0.5",
                "optimizer.weight_decay=0.0"],  # tinit / tfinal / deltaT: set from --steps below
    "Houlsby": ["peft.method=adapter", "peft.adapter_config=houlsby", "peft.reduction_factor=16",
                "peft.dropout=0.0"],
    "Pfeiffer": ["peft.method=adapter", "peft.adapter_config=pfeiffer", "peft.reduction_factor=16",
                 "peft.dropout=0.0"],
    "prefix": ["peft.method=prefix", "peft.num_virtual_tokens=20", "optimizer.learning_rate=1e-2"],
    "full": ["peft.method=none", "optimizer.learning_rate=5e-5"],
}


def adalora_schedule(steps: int) -> list[str]:
    """PEFT-style phases scaled to the run: 10% warm-up, 20% final, an allocation every 1% of it."""
    tinit, tfinal = steps // 10, steps // 5
    if tinit >= steps - tfinal:
        tinit, tfinal = 0, 0
    return [f"peft.tinit={tinit}", f"peft.tfinal={tfinal}", f"peft.deltaT={max(steps // 100, 1)}"]


def tree_bytes(tree) -> int:
    return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype")))


def longest_batch(loader) -> dict:
    """A batch of the loader's longest bucket (the step every method is timed on)."""
    return max(loader, key=lambda batch: batch["input_ids"].shape[1])


def run_method(name: str, overrides: list[str], args, run_root: Path) -> dict:
    from jaxkernel.config import load_config
    from jaxkernel.peft import count_parameters
    from jaxkernel.train.loop import Trainer

    common = [
        f"train.steps={args.steps}", f"train.batch_size={args.batch_size}", f"train.run_dir={run_root / name}",
        f"train.eval_every={args.steps + 1}", "checkpoint.every=null", "logging.progress_bar=false",
        "logging.tensorboard=false", "data.eval_split=null", f"data.max_length={args.max_length}",
    ]
    if args.max_train_examples:
        common.append(f"data.max_train_examples={args.max_train_examples}")
    if args.max_test_examples:
        common.append(f"data.max_eval_examples={args.max_test_examples}")
    extra = adalora_schedule(args.steps) if name == "AdaLoRA" else []
    trainer = Trainer(load_config(PRESET, common + overrides + extra))
    trainable, total = count_parameters(trainer.model)
    opt_bytes = tree_bytes(trainer.state.opt_state)
    start = time.perf_counter()
    results = trainer.fit()
    fit_seconds = time.perf_counter() - start
    f1 = results.get("test", {}).get("f1")

    # Step time: one batch padded to the longest bucket, compiled first, then timed step by step.
    batch = trainer.to_device(longest_batch(trainer.train_loader))
    state = trainer.state
    state, _ = trainer.train_step(state, batch)
    jax.block_until_ready(state)
    times = []
    for _ in range(args.time_steps):
        t0 = time.perf_counter()
        state, metrics = trainer.train_step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    return {
        "method": name, "trainable": trainable, "total": total, "optimizer_bytes": opt_bytes,
        "step_ms": 1000 * statistics.median(times), "batch_shape": list(batch["input_ids"].shape),
        "test_f1": f1, "fit_seconds": fit_seconds, "steps": args.steps,
    }


def time_round_robin(names: list[str], args, run_root: Path, rounds: int = 5) -> dict[str, float]:
    """Step time only: every method's train step on the same padded batch, timed in interleaved rounds.

    On a shared machine the load changes during a long run; timing all methods round-robin (median over
    ``rounds`` x ``--time-steps``) makes the step-time column comparable across rows.
    """
    from jaxkernel.config import load_config
    from jaxkernel.train.loop import Trainer

    steps, batch = {}, None
    for name in names:
        common = [f"train.steps={args.steps}", f"train.batch_size={args.batch_size}",
                  f"train.run_dir={run_root / name}", "logging.progress_bar=false", "logging.tensorboard=false",
                  "data.eval_split=null", f"data.max_length={args.max_length}", "data.max_train_examples=512"]
        extra = adalora_schedule(args.steps) if name == "AdaLoRA" else []
        trainer = Trainer(load_config(PRESET, common + METHODS[name] + extra), roles=("train",))
        if batch is None:  # one batch of the longest bucket, the same for every method
            batch = longest_batch(trainer.train_loader)
        device_batch = trainer.to_device(batch)
        state, _ = trainer.train_step(trainer.state, device_batch)  # compile
        jax.block_until_ready(state)
        steps[name] = [trainer.train_step, state, device_batch]
    times = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            step, state, device_batch = steps[name]
            for _ in range(args.time_steps):
                t0 = time.perf_counter()
                state, metrics = step(state, device_batch)
                jax.block_until_ready(metrics)
                times[name].append(time.perf_counter() - t0)
            steps[name][1] = state
    print(f"batch shape {list(batch['input_ids'].shape)}, {rounds} rounds x {args.time_steps} steps")
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def table(rows: list[dict]) -> str:
    lines = ["| method | trainable params | trainable % | optimizer state | step (ms) | test F1 |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        f1 = "n/a" if r["test_f1"] is None else f"{r['test_f1']:.4f}"
        lines.append(f"| {r['method']} | {r['trainable']:,} | {100 * r['trainable'] / r['total']:.3f} | "
                     f"{r['optimizer_bytes'] / 2**20:.2f} MiB | {r['step_ms']:.1f} | {f1} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps per method (the same for all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-train-examples", type=int, default=None)
    parser.add_argument("--max-test-examples", type=int, default=None)
    parser.add_argument("--time-steps", type=int, default=20, help="extra steps timed per method")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--smoke", action="store_true",
                        help="2 steps, batch 4, length 32, 32 train / 16 test examples, 2 timed steps: checks it runs")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--time-only", action="store_true",
                        help="no training: time every method's step round-robin (comparable under changing load)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.batch_size, args.max_length = 2, 4, 32
        args.max_train_examples, args.max_test_examples, args.time_steps = 32, 16, 2
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    if args.time_only:
        with tempfile.TemporaryDirectory(prefix="peft-methods-") as tmp:
            ms = time_round_robin(names, args, Path(tmp))
        print("| method | step (ms) |\n|---|---:|")
        for name, value in ms.items():
            print(f"| {name} | {value:.1f} |")
        if args.out:
            args.out.write_text(json.dumps(ms, indent=2) + "\n")
        return [{"method": n, "step_ms": v} for n, v in ms.items()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="peft-methods-") as tmp:
        for name in names:
            rows.append(run_method(name, METHODS[name], args, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.steps} steps, batch {args.batch_size}, max_length {args.max_length}, "
          f"{jax.devices()[0].device_kind} x{jax.device_count()}\n")
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
