"""From a preset config to tokenized splits and loaders, offline on the real data."""

from pathlib import Path

import numpy as np
import pytest

from jaxkernel.config import load_config
from jaxkernel.data import DataError, build_loader, build_task_data, encode_rows, entities, ids_to_tags

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def in_repo(monkeypatch, shared_data):
    monkeypatch.chdir(ROOT)  # presets name ../shared/data relative to the project root
    return ROOT


def test_ner_preset_builds_offline(in_repo):
    config = load_config(in_repo / "configs" / "bert_ner_lora.yaml",
                         ["data.max_train_examples=256", "data.max_eval_examples=64", "train.batch_size=32"])
    data = build_task_data(config)
    assert data.labels == ("O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER")
    assert {role: len(f) for role, f in data.features.items()} == {"train": 256, "eval": 64, "test": 64}
    assert data.records["train"][0]["tokens"][:2] == ["R.H.", "Saunders"]
    assert data.buckets == tuple(range(8, 129, 8))  # data.min_bucket=8, data.bucket_multiple=8
    train = build_loader(data, config, "train", process_index=1, process_count=2)
    batch = next(iter(train))
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels", "index"}
    assert batch["input_ids"].shape[0] == 16 and batch["input_ids"].shape[1] in data.buckets
    assert len(train) == 256 // 32 and train.state_dict()["index"] == 1
    test = build_loader(data, config, "test")
    rows = np.concatenate([b["index"] for b in test])
    assert sorted(rows[rows >= 0].tolist()) == list(range(64))  # eval/test: every feature once,
    assert (np.diff(data.features["test"].lengths[rows[rows >= 0]]) <= 0).all()  # longest first (less padding)


def test_labels_outside_the_configured_set_fail_clearly(in_repo):
    config = load_config(in_repo / "configs" / "bert_ner_lora.yaml",
                         ["model.labels=[O, B-PER, I-PER]", "data.max_train_examples=50"])
    with pytest.raises(DataError, match=r"wikiann-en/train.txt:1: label 'B-ORG' is not in the label set"):
        build_task_data(config, roles=("train",))
    config = load_config(in_repo / "configs" / "bert_ner_lora.yaml", ["model.num_labels=5"])
    with pytest.raises(DataError, match=r"model.num_labels=5 but the data has 7 labels"):
        build_task_data(config, roles=("train",))


def test_sst2_preset_labels_by_name(in_repo):
    config = load_config(in_repo / "configs" / "bert_sst2_lora.yaml",
                         ["data.max_train_examples=64", "data.max_eval_examples=40", "eval.batch_size=16"])
    data = build_task_data(config)
    assert data.labels == ("negative", "positive")
    assert data.features["eval"].scalars["labels"][:4].tolist() == [int(r["label"]) for r in data.records["eval"][:4]]
    batches = list(build_loader(data, config, "eval"))
    assert [b["input_ids"].shape[0] for b in batches] == [16, 16, 16]
    assert batches[-1]["index"].tolist()[-8:] == [-1] * 8 and (batches[-1]["labels"][-8:] == -100).all()


def test_gpt2_lm_preset_with_local_tokenizer(in_repo, shared_data):
    config = load_config(in_repo / "configs" / "gpt2_lm_lora.yaml", [
        f"model.tokenizer={shared_data / 'gpt2-tokenizer'}", "data.max_length=128", "data.max_train_examples=300",
        "data.max_eval_examples=50",
    ])
    data = build_task_data(config)
    assert data.labels is None and set(data.features) == {"train", "eval"}
    batch = next(iter(build_loader(data, config, "train")))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "index"}  # GPT-2: no token types
    assert batch["input_ids"].shape == (16, 128) and batch["attention_mask"].all()
    assert np.array_equal(batch["labels"], batch["input_ids"])
    assert data.records["eval"][0]["source"] != data.records["train"][-1]["source"]


def test_encode_rows_for_predict(in_repo, minilm_dir):
    from jaxkernel.data import load_tokenizer, word_predictions

    config = load_config(in_repo / "configs" / "bert_ner_lora.yaml")
    labels = ("O", "B-PER", "I-PER")
    records, features = encode_rows([{"text": "Ada Lovelace met Babbage"}], config, load_tokenizer(str(minilm_dir)),
                                    labels)
    assert records[0]["tokens"] == ["Ada", "Lovelace", "met", "Babbage"] and not features.has_labels
    # pretend the model tagged the first sub-token of each word: decode back to entity spans
    token_preds = np.zeros(len(features.word_ids[0]), np.int32)
    first = {}
    for t, w in enumerate(features.word_ids[0]):
        first.setdefault(int(w), t)
    token_preds[first[0]], token_preds[first[1]], token_preds[first[3]] = 1, 2, 1
    per_word = word_predictions(token_preds, features.word_ids[0], len(records[0]["tokens"]), fill=0)
    tags = ids_to_tags(per_word, labels)
    assert entities(records[0]["tokens"], tags) == [
        {"type": "PER", "start": 0, "end": 2, "text": "Ada Lovelace"},
        {"type": "PER", "start": 3, "end": 4, "text": "Babbage"},
    ]
