"""A tiny BERT NER setup on the real WikiANN data for the compression trainer tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import transformers

from jaxkernel.config import load_config

WIKIANN_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def tiny_bert_dir(root: Path, minilm_dir: Path, *, layers: int = 3, name: str = "tiny-bert",
                  task_cls=transformers.BertForTokenClassification) -> Path:
    """A seeded random BERT (width 32, 4 heads) with MiniLM's real tokenizer and the WikiANN labels."""
    path = root / name
    if not (path / "config.json").exists():
        torch.manual_seed(0)
        config = transformers.BertConfig(
            vocab_size=30522, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=64, id2label=dict(enumerate(WIKIANN_LABELS)),
            label2id={n: i for i, n in enumerate(WIKIANN_LABELS)},
        )
        task_cls(config).save_pretrained(path)
        for file in TOKENIZER_FILES:
            shutil.copyfile(minilm_dir / file, path / file)
    return path


def ner_overrides(model_dir: Path, shared_data: Path, run_dir: Path, steps: int = 6) -> list[str]:
    return [
        f"model.path={model_dir}",
        "model.task=token-classification",
        f"model.labels=[{','.join(WIKIANN_LABELS)}]",
        f"data.source={shared_data / 'wikiann-en'}",
        "data.max_length=32",
        "data.buckets=[32]",
        "data.max_train_examples=96",
        "data.max_eval_examples=16",
        "data.test_split=null",
        "optimizer.learning_rate=1e-2",
        f"train.steps={steps}",
        "train.batch_size=8",
        f"train.eval_every={steps}",
        f"train.run_dir={run_dir}",
        "checkpoint.every=3",
        "checkpoint.async_save=false",
        "logging.every=1",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
        "eval.test_at_end=false",
    ]


def ner_config(model_dir, shared_data, run_dir, *extra, steps: int = 6):
    return load_config(None, ner_overrides(model_dir, shared_data, run_dir, steps) + list(extra))
