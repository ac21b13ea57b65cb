"""Label sets and NER decoding helpers (ids -> tags -> entity spans)."""

import numpy as np
import pytest
from seqeval.metrics.sequence_labeling import get_entities

from jaxkernel.data import DataError, collect_labels, entities, ids_to_tags, label_id, tags_to_spans, word_predictions
from jaxkernel.data.labels import b_to_i


def test_collect_labels_orders_o_then_types():
    records = [{"tags": ["B-PER", "I-PER", "O"]}, {"tags": ["B-LOC", "O", "I-ORG", "B-ORG"]}]
    assert collect_labels(records, "token-classification") == ("O", "B-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER")
    assert collect_labels([{"label": "10"}, {"label": "2"}, {"label": "0"}], "sequence-classification") == (
        "0", "2", "10")
    assert collect_labels([{"label": "pos"}, {"label": "neg"}], "sequence-classification") == ("neg", "pos")


def test_collect_labels_on_wikiann(shared_data):
    from jaxkernel.data import read_conll

    records = read_conll(shared_data / "wikiann-en" / "dev.txt")
    assert collect_labels(records, "token-classification") == (
        "O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER")


def test_label_id_by_name_then_index():
    assert label_id("positive", {"negative": 0, "positive": 1}, "x") == 1
    assert label_id("1", {"negative": 0, "positive": 1}, "x") == 1
    assert label_id("1", {"1": 0, "0": 1}, "x") == 0  # numeric names are names, never indices
    with pytest.raises(DataError, match=r"f.tsv:3: label 'neutral' is not in the label set"):
        label_id("neutral", {"negative": 0, "positive": 1}, "f.tsv:3")


def test_b_to_i():
    assert b_to_i(("O", "B-PER", "I-PER", "B-MISC")).tolist() == [0, 2, 2, 3]


def test_ids_to_tags_and_spans():
    labels = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
    tags = ids_to_tags(np.array([1, 2, 0, 3]), labels)
    assert tags == ["B-PER", "I-PER", "O", "B-LOC"]
    assert tags_to_spans(tags) == [("PER", 0, 2), ("LOC", 3, 4)]
    assert entities(["Ada", "Lovelace", "in", "London"], tags) == [
        {"type": "PER", "start": 0, "end": 2, "text": "Ada Lovelace"},
        {"type": "LOC", "start": 3, "end": 4, "text": "London"},
    ]
    with pytest.raises(ValueError, match="label id 7 is outside the 5 labels"):
        ids_to_tags([7], labels)


def test_spans_match_seqeval_on_random_sequences():
    rng = np.random.default_rng(0)
    vocab = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]
    for _ in range(500):
        tags = list(rng.choice(vocab, size=rng.integers(1, 12)))
        ours = [(kind, start, end - 1) for kind, start, end in tags_to_spans(tags)]
        assert ours == get_entities(tags), tags


def test_word_predictions_use_first_subtoken_and_fill_truncated_words():
    # [CLS] w0 w0 w1 [SEP] pad ; w2 was truncated away
    token_preds = [5, 1, 2, 3, 5, 5]
    word_ids = [-1, 0, 0, 1, -1, -1]
    assert word_predictions(token_preds, word_ids, num_words=3, fill=0).tolist() == [1, 3, 0]
