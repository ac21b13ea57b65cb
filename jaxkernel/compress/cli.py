"""``jaxkernel prune MODEL_OR_RUN OUT``: one-shot structured pruning with a dev set.

Scores heads and FFN units on a few labelled batches (``jaxkernel.compress.prune``), removes the
least important, writes an HF directory (``pruned_heads`` + smaller ``intermediate_size``) and
``prune_report.json``, and prints parameters, bytes and measured latency before and after.
MODEL_OR_RUN is an HF directory / hub id with a task head, or a run directory (its trained,
merged model is used). Settings come from the ``prune`` section of ``--config`` and the flags.

Example::

    jaxkernel prune runs/bert_ner_lora out/ner-pruned --heads 0.5 --ffn 0.3
    jaxkernel prune out/ner-merged out/ner-pruned --heads 0.25 --data ../shared/data/wikiann-en \\
        --config configs/bert_ner_prune_heads.yaml
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def measure_latency(model, *, batch: int = 8, length: int = 128, runs: int = 5) -> float:
    """Median seconds of a jitted forward on a (batch, length) input, after one warm-up call."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jaxkernel.models.registry import family_of
    from jaxkernel.train.step import _model_inputs, forward

    length = min(length, family_of(model).dims(model.config).positions)
    graphdef, state = nnx.split(model)
    inputs = _model_inputs(model)
    ids = jnp.asarray(np.random.RandomState(0).randint(3, 100, (batch, length)))
    data = {"input_ids": ids, "attention_mask": jnp.ones_like(ids), "token_type_ids": jnp.zeros_like(ids)}
    run = jax.jit(lambda state, data: forward(nnx.merge(graphdef, state), data, inputs))
    jax.block_until_ready(run(state, data))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        jax.block_until_ready(run(state, data))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def model_stats(model, **latency) -> dict:
    from jaxkernel.peft import count_parameters
    from jaxkernel.quant.memory import param_bytes

    return {"parameters": count_parameters(model)[1], "bytes": param_bytes(model).total,
            "latency_s": measure_latency(model, **latency) if latency.get("runs") else None}


def _load(src: str, tmp: Path):
    """(model directory with weights + tokenizer, run config or None)."""
    from jaxkernel.config import load_resolved
    from jaxkernel.train.loop import Trainer

    run_config = load_resolved(src) if Path(src).is_dir() else None
    if run_config is None:
        return src, None
    trainer = Trainer(run_config, roles=("train",), require_checkpoint=True)
    return str(trainer.export(tmp / "merged", merged=True)), run_config


def _run_prune(args: argparse.Namespace) -> int:
    from jaxkernel.compress.prune import can_prune_heads, compute_importance, pad_pruned_heads, prune_model
    from jaxkernel.config import config_to_dict, config_from_dict, load_config
    from jaxkernel.data import build_loader, build_task_data
    from jaxkernel.hf.pretrained import from_pretrained, save_pretrained
    from jaxkernel.quant.memory import format_bytes

    with tempfile.TemporaryDirectory() as tmp:
        model_dir, run_config = _load(args.src, Path(tmp))
        model = from_pretrained(model_dir, task=args.task)
        base = run_config if run_config is not None and args.config is None else load_config(args.config)
        raw = config_to_dict(base)
        raw["model"].update(path=str(model_dir), task=model.task, tokenizer=None)
        if getattr(model.config, "labels", None):
            raw["model"].update(labels=list(model.config.labels), num_labels=None)
        if args.data:
            raw["data"]["source"] = args.data
        config = config_from_dict(raw, source="jaxkernel prune")
        if args.set:
            from jaxkernel.config import apply_overrides

            config = apply_overrides(config, args.set)
        p = config.prune
        heads = p.heads if args.heads is None else args.heads
        ffn = p.ffn if args.ffn is None else args.ffn
        scope = args.scope or p.scope
        if not heads and not ffn:
            raise ValueError("nothing to prune: give --heads and/or --ffn (a fraction in (0, 1) or a count)")
        if config.data.source is None:
            raise ValueError("no dev data: give --data DIR (or data.source in --config)")
        role = p.split
        data = build_task_data(config, roles=("train", role) if role != "train" else ("train",))
        loader = build_loader(data, config, role)
        batches = []
        for batch in loader:
            batches.append(batch)
            if len(batches) == (args.batches or p.batches):
                break
        latency = dict(batch=args.latency_batch, length=args.latency_length, runs=args.latency_runs)
        before = model_stats(model, **latency)
        importance = compute_importance(model, batches, heads=bool(heads) and can_prune_heads(model))
        report = prune_model(model, importance, heads=heads, ffn=ffn, scope=scope)
        after = model_stats(model, **latency)
        zero_heads = args.zero_heads or p.zero_heads
        out = save_pretrained(pad_pruned_heads(model) if zero_heads else model, args.out,
                              tokenizer_from=model_dir)
        summary = {"heads_removed": {str(k): v for k, v in report["heads"].items()},
                   "ffn_units_removed_per_layer": report["ffn"], "scored_batches": importance.batches,
                   "before": before, "after": after, "zero_heads": zero_heads}
        (Path(out) / "prune_report.json").write_text(json.dumps(summary, indent=2))
    n_heads = sum(len(v) for v in report["heads"].values())
    print(f"removed {n_heads} attention heads ({scope}) and {report['ffn']} FFN units per layer, "
          f"scored on {importance.batches} {role} batches")
    for what, key, fmt in (("parameters", "parameters", "{:,}"), ("bytes", "bytes", None),
                           ("latency", "latency_s", "{:.1f} ms")):
        a, b = before[key], after[key]
        if a is None:
            continue
        show = (lambda v: format_bytes(v)) if fmt is None else (
            (lambda v: fmt.format(v * 1000)) if key == "latency_s" else (lambda v: fmt.format(v)))
        print(f"  {what:<10} {show(a):>14} -> {show(b):>14} ({b / a:.3f}x)")
    print(f"wrote {type(model).__name__} to {out}" + (" (pruned heads as zeros)" if zero_heads else ""))
    return 0


def add_prune(subparsers) -> None:
    p = subparsers.add_parser(
        "prune", help="remove the least important attention heads / FFN units and save a smaller HF model",
        description="One-shot structured pruning scored on a dev set (Michel et al. 2019). Heads: BERT/RoBERTa "
        "(HF pruned_heads); other families: FFN units only, the same number in every layer.",
    )
    p.add_argument("src", help="HF model directory / hub id with a task head, or a jaxkernel run directory")
    p.add_argument("out", help="output HF directory")
    p.add_argument("--heads", type=float, default=None, help="heads to remove: fraction in (0, 1) or a count")
    p.add_argument("--ffn", type=float, default=None, help="FFN units to remove per layer: fraction or count")
    p.add_argument("--scope", choices=["layer", "global"], default=None, help="rank heads per layer or globally")
    p.add_argument("--data", default=None, help="dataset directory/file (data.source) holding the dev split")
    p.add_argument("--config", default=None, help="YAML with data / prune sections (default: the run's config)")
    p.add_argument("--task", default=None, help="model head (default: from config.json architectures)")
    p.add_argument("--batches", type=int, default=None, help="dev batches scored (prune.batches)")
    p.add_argument("--zero-heads", action="store_true", help="write pruned heads as zeros (transformers >= 5)")
    p.add_argument("--latency-batch", type=int, default=8, help="batch size of the latency measurement")
    p.add_argument("--latency-length", type=int, default=128, help="sequence length of the latency measurement")
    p.add_argument("--latency-runs", type=int, default=5, help="timed forward calls (0 = do not measure)")
    p.add_argument("set", nargs="*", default=[], help="config overrides section.key=value")
    p.set_defaults(func=_run_prune)
