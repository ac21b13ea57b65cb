"""Data readers and split resolution on the real files in ../shared/data, and bad input in temp files."""

import json

import pytest

from jaxkernel.config import load_config
from jaxkernel.data import DataError, load_records, read_conll, read_json, read_jsonl, read_table, read_text, to_records
from jaxkernel.data.sources import _rows_from_hub_split, hub_label_names


def data_config(*overrides):
    return load_config(None, list(overrides)).data


def test_wikiann_conll_strips_language_prefix(shared_data):
    rows = read_conll(shared_data / "wikiann-en" / "train.txt")
    assert len(rows) == 20000
    first = rows[0]
    assert first["tokens"] == ["R.H.", "Saunders", "(", "St.", "Lawrence", "River", ")", "(", "968", "MW", ")"]
    assert first["tags"] == ["B-ORG", "I-ORG", "O", "B-ORG", "I-ORG", "I-ORG", "O", "O", "O", "O", "O"]
    assert first["source"].endswith("wikiann-en/train.txt:1")
    assert rows[1]["tokens"][3:5] == ["Anders", "Lindström"] and rows[1]["source"].endswith(":13")
    assert not any(t.startswith("en:") for r in rows for t in r["tokens"])
    assert {t for r in rows for t in r["tags"]} == {"O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"}


def test_wnut17_tolerates_the_stray_bom_line(shared_data):
    rows = read_conll(shared_data / "wnut17" / "dev.conll")
    assert len(rows) == 1009
    last = rows[-1]
    assert last["tokens"] == ["This", "guy", "needs", "his", "own", "show", "on", "Discivery", "Channel", "!"]
    assert last["tags"][7:9] == ["B-corporation", "I-corporation"]
    assert not any("\ufeff" in t for r in rows for t in r["tokens"])
    assert len(read_conll(shared_data / "wnut17" / "train.conll")) == 3394


def test_conll_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.conll"
    path.write_text("EU\tB-ORG\nrejects\tO\n\nGerman\tB-MISC\ncall\n")
    with pytest.raises(DataError, match=rf"{path}:5: expected 'TOKEN<TAB>TAG'.*'call'"):
        read_conll(path)


def test_conll_2003_layout(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n")
    rows = read_conll(path)
    assert [r["tokens"] for r in rows] == [["EU", "rejects"], ["Peter"]]
    assert [r["tags"] for r in rows] == [["B-ORG", "O"], ["B-PER"]]
    assert rows[1]["source"].endswith(":6")
    mixed = tmp_path / "mixed.txt"  # a prefix only some tokens carry is part of the token
    mixed.write_text("en:Paris\tB-LOC\nis\tO\n")
    assert read_conll(mixed)[0]["tokens"] == ["en:Paris", "is"]


def test_sst2_tsv_label_first(shared_data):
    rows = read_table(shared_data / "sst2" / "dev.tsv", delimiter="\t")
    assert len(rows) == 872
    assert (rows[0]["label"], rows[0]["sentence"]) == ("0", "one long string of cliches .")
    assert len(read_table(shared_data / "sst2" / "train.tsv", delimiter="\t")) == 67349
    records = to_records(rows, "sequence-classification")
    assert records[0] == {"source": rows[0]["source"], "text": "one long string of cliches .", "label": "0",
                          "text_pair": None}


def test_table_bad_row_names_file_and_line(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("label\tsentence\n1\tfine\n0\ttoo\tmany\n")
    with pytest.raises(DataError, match=rf"{path}:3: expected 2 fields \(label, sentence\), got 3"):
        read_table(path, delimiter="\t")
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text('sentence1,sentence2,label\n"a, quoted",b,yes\n')
    rows = to_records(read_table(csv_path, delimiter=","), "sequence-classification")
    assert (rows[0]["text"], rows[0]["text_pair"], rows[0]["label"]) == ("a, quoted", "b", "yes")


def test_jsonl_and_squad_json(tmp_path):
    path = tmp_path / "train.jsonl"
    records = [
        {"id": "q1", "question": "Who?", "context": "Ada wrote.", "answers": {"text": ["Ada"], "answer_start": [0]}},
        {"id": "q2", "question": "What?", "context": "It ran.", "answers": [{"text": "ran", "answer_start": 3}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    qa = to_records(read_jsonl(path), "question-answering")
    assert [r["answers"] for r in qa] == [
        {"text": ["Ada"], "answer_start": [0]}, {"text": ["ran"], "answer_start": [3]}]
    assert qa[1]["source"] == f"{path}:2"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=rf"{bad}:2: invalid JSON"):
        read_jsonl(bad)
    squad = tmp_path / "dev.json"
    squad.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "Ada wrote.", "qas": [
        {"id": "x", "question": "Who?", "answers": [{"text": "Ada", "answer_start": 0}]}]}]}]}))
    rows = read_json(squad)
    assert rows[0]["context"] == "Ada wrote." and rows[0]["answers"] == {"text": ["Ada"], "answer_start": [0]}


def test_plain_text_paragraphs_rebuild_the_file(shared_data):
    path = shared_data / "tinyshakespeare" / "input.txt"
    rows = read_text(path)
    assert rows[0]["text"] == "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    assert "".join(r["text"] for r in rows) == path.read_text()


def test_missing_column_says_how_to_map_it(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("polarity\tcomment\n1\tgood\n")
    with pytest.raises(DataError, match=r"train.tsv:2: no column for 'text'.*\[.comment., .polarity.\].*data.columns"):
        to_records(read_table(path, delimiter="\t"), "sequence-classification")
    columns = {"text": "comment", "label": "polarity"}
    rows = to_records(read_table(path, delimiter="\t"), "sequence-classification", columns)
    assert (rows[0]["text"], rows[0]["label"]) == ("good", "1")


def test_load_records_finds_splits_by_alias(shared_data):
    records = load_records(data_config(f"data.source={shared_data / 'wikiann-en'}", "data.max_eval_examples=50"),
                           "token-classification")
    assert {k: len(v) for k, v in records.splits.items()} == {"train": 20000, "eval": 50, "test": 50}
    assert records.splits["eval"][0]["source"].endswith("dev.txt:1")  # validation -> dev.txt
    assert records.label_names is None  # local files declare no label order


def test_source_candidates_fall_back_in_order(shared_data, tmp_path):
    config = data_config(f"data.source=[{tmp_path / 'absent'}, {shared_data / 'sst2'}]", "data.max_train_examples=10")
    records = load_records(config, "sequence-classification")
    assert len(records.splits["train"]) == 10 and records.origin == str(shared_data / "sst2")
    with pytest.raises(DataError, match=r"none of .*absent.* exists.*hub:<dataset id>"):
        load_records(data_config(f"data.source={tmp_path / 'absent'}"), "sequence-classification")
    with pytest.raises(DataError, match="set data.source"):
        load_records(data_config(), "sequence-classification")


def test_single_file_with_holdout(shared_data):
    config = data_config(f"data.source={shared_data / 'tinyshakespeare' / 'input.txt'}", "data.holdout_fraction=0.1")
    records = load_records(config, "causal-lm")
    train, held = records.splits["train"], records.splits["eval"]
    assert len(held) == round(0.1 * (len(train) + len(held)))
    assert train[0]["text"].startswith("First Citizen:")
    assert held[-1]["source"].endswith(":39997")  # the held-out part is the end of the file, not a sample


def test_empty_split_is_an_error(tmp_path):
    (tmp_path / "train.txt").write_text("\n\n")
    with pytest.raises(DataError, match=r"the train split \('train'\) holds no examples"):
        load_records(data_config(f"data.source={tmp_path}"), "token-classification")
    (tmp_path / "train.tsv").write_text("label\tsentence\n")
    with pytest.raises(DataError, match="no file for the train split 'training'"):
        load_records(data_config(f"data.source={tmp_path}", "data.train_split=training"), "sequence-classification")


def test_hub_rows_get_label_names():
    import datasets

    features = datasets.Features({
        "tokens": datasets.Sequence(datasets.Value("string")),
        "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER"])),
    })
    split = datasets.Dataset.from_dict({"tokens": [["Ada", "Lovelace", "wrote"]], "ner_tags": [[1, 2, 0]]}, features)
    rows = _rows_from_hub_split(split, "wikiann[train]")
    records = to_records(rows, "token-classification")
    assert records[0]["tags"] == ["B-PER", "I-PER", "O"] and records[0]["source"] == "wikiann[train]#0"
    assert hub_label_names(split, "token-classification") == ("O", "B-PER", "I-PER")
    glue = datasets.Dataset.from_dict(
        {"sentence": ["good", "hidden"], "label": [1, -1]},
        datasets.Features({"sentence": datasets.Value("string"),
                           "label": datasets.ClassLabel(names=["negative", "positive"])}),
    )
    records = to_records(_rows_from_hub_split(glue, "glue[test]"), "sequence-classification")
    assert records[0]["label"] == "positive" and "label" not in records[1]  # -1 = unlabelled


def test_hub_source_picks_splits_by_alias(monkeypatch):
    import datasets

    from jaxkernel.data import sources

    features = datasets.Features({
        "tokens": datasets.Sequence(datasets.Value("string")),
        "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-LOC", "I-LOC"])),
    })

    def split(n):
        return datasets.Dataset.from_dict({"tokens": [["in", "Paris"]] * n, "ner_tags": [[0, 1]] * n}, features)

    calls = []

    def fake_load(dataset_id, config_name):  # the hub is offline here; check what would be asked of it
        calls.append((dataset_id, config_name))
        return datasets.DatasetDict({"train": split(4), "validation": split(2)})

    monkeypatch.setattr(sources, "_load_hub", fake_load)
    records = load_records(data_config("data.source=[/nonexistent/wikiann, 'hub:wikiann:en']"), "token-classification")
    assert calls == [("wikiann", "en")]
    assert {k: len(v) for k, v in records.splits.items()} == {"train": 4, "eval": 2}  # no test split: skipped
    assert records.label_names == ("O", "B-LOC", "I-LOC") and records.origin == "hub:wikiann:en"
    assert records.splits["eval"][1] == {"source": "hub:wikiann:en[validation]#1", "tokens": ["in", "Paris"],
                                         "tags": ["O", "B-LOC"]}
