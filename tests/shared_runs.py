"""Tiny models and a trained run shared by the export-verification and bad-input tests.

Built once per pytest session under the session's base temp directory (a second module
asking for them gets the same directories). Tests that change a run work on a copy.
"""

from __future__ import annotations

from pathlib import Path

import transformers

from train_fixtures import lm_config, tiny_gpt2_dir
from tiny_models import hf_bert

FAST = ("checkpoint.every=1", "checkpoint.async_save=false", "data.max_train_examples=64",
        "data.max_eval_examples=8", "train.eval_every=100", "checkpoint.keep_last=3")
BERT_WORDS = "jaxkernel checks every export before it ships . paris is nice in may angela met".split()


def tiny_gpt2(tmp_path_factory, shared_data) -> Path:
    return tiny_gpt2_dir(tmp_path_factory.getbasetemp() / "shared-gpt2", shared_data)


def tiny_lm_run(tmp_path_factory, shared_data) -> Path:
    """A GPT-2 LoRA run trained 2 steps, a checkpoint at each step. Do not change it: copy it."""
    run = tmp_path_factory.getbasetemp() / "shared-lm-run"
    if not (run / "checkpoints" / "2").is_dir():
        from jaxkernel.train.loop import Trainer

        Trainer(lm_config(tiny_gpt2(tmp_path_factory, shared_data), shared_data, str(run), *FAST, steps=2)).fit()
    return run


def tiny_bert_dir(tmp_path_factory, num_labels: int = 3) -> Path:
    """A seeded token-classification BERT (vocab 97) with a WordPiece tokenizer that fits its vocabulary."""
    path = tmp_path_factory.getbasetemp() / "shared-bert"
    if not (path / "config.json").is_file():
        hf_bert("h36-heads3", "token-classification", num_labels=num_labels).save_pretrained(path)
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + BERT_WORDS
        vocab += [f"w{i}" for i in range(97 - len(vocab))]
        (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
        transformers.BertTokenizer(vocab=str(path / "vocab.txt")).save_pretrained(path)
    return path
