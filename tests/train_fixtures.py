"""Small, real training setups for the trainer tests: a tiny GPT-2 that uses the real
GPT-2 tokenizer, and configs on the real data in ../shared/data."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import transformers

from jaxkernel.config import load_config


def tiny_gpt2_dir(root: Path, shared_data: Path, n_head: int = 4) -> Path:
    """A seeded random GPT-2 (2 layers, width 32) saved with the real GPT-2 tokenizer files."""
    path = root / "tiny-gpt2"
    if not (path / "config.json").exists():
        torch.manual_seed(0)
        config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=n_head, n_positions=128)
        transformers.GPT2LMHeadModel(config).save_pretrained(path)
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(shared_data / "gpt2-tokenizer" / name, path / name)
    return path


def lm_overrides(model_dir: Path, shared_data: Path, run_dir: Path, steps: int = 8) -> list[str]:
    return [
        f"model.path={model_dir}",
        "model.task=causal-lm",
        f"data.source={shared_data / 'tinyshakespeare' / 'input.txt'}",
        "data.max_length=32",
        "data.buckets=[32]",
        "data.holdout_fraction=0.1",
        "data.test_split=null",
        "data.max_train_examples=400",
        "data.max_eval_examples=64",
        "peft.method=lora",
        "peft.r=4",
        "peft.alpha=8",
        "peft.dropout=0.1",
        "peft.target_modules=[c_attn,c_fc]",
        "optimizer.learning_rate=1e-2",
        "schedule.kind=cosine",
        "schedule.warmup_steps=2",
        f"train.steps={steps}",
        "train.batch_size=8",
        f"train.eval_every={steps}",
        f"train.run_dir={run_dir}",
        "checkpoint.every=4",
        "checkpoint.keep_last=3",
        "checkpoint.async_save=true",
        "logging.every=1",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
        "eval.test_at_end=false",
    ]


def lm_config(model_dir, shared_data, run_dir, *extra, steps: int = 8):
    return load_config(None, lm_overrides(model_dir, shared_data, run_dir, steps) + list(extra))
