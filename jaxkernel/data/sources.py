"""Find a run's splits (local files or a Hugging Face hub dataset) and read them as records.

Records are plain dicts in one canonical layout per task, whatever the source:

=========================  ==========================================================
token-classification       ``{"tokens": [str], "tags": [str]}``
sequence-classification    ``{"text": str, "text_pair": str | None, "label": str}``
question-answering         ``{"id": str, "question": str, "context": str,
                           "answers": {"text": [str], "answer_start": [int]}}``
causal-lm                  ``{"text": str}``
=========================  ==========================================================

Every record also carries ``"source"`` (``"file:line"`` or ``"hub_id[split]#row"``) for
error messages. Labels (``tags``, ``label``) are optional: unlabelled records serve
``predict``.

Example::

    records = load_records(config.data, "token-classification")
    records["train"][0]["tokens"], records.keys()   # roles: train, eval, test
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from jaxkernel.config import DataConfig, resolve_path
from jaxkernel.data.readers import DataError, read_conll, read_json, read_jsonl, read_table, read_text

SPLIT_ALIASES = {"validation": ("validation", "dev", "valid", "val"), "dev": ("dev", "validation", "valid", "val")}
EXTENSIONS = (".txt", ".conll", ".iob", ".bio", ".tsv", ".csv", ".jsonl", ".json")

# Canonical field -> source column names tried in order (data.columns overrides).
COLUMN_CANDIDATES = {
    "tokens": ("tokens", "words"),
    "tags": ("tags", "ner_tags", "labels", "label"),
    "text": ("text", "sentence", "sentence1", "content", "review", "question1"),
    "text_pair": ("text_pair", "sentence2", "question2"),
    "label": ("label", "labels"),
    "question": ("question",),
    "context": ("context",),
    "answers": ("answers",),
    "id": ("id",),
}
REQUIRED = {
    "token-classification": ("tokens",),
    "sequence-classification": ("text",),
    "question-answering": ("question", "context"),
    "causal-lm": ("text",),
}
# The field training and evaluation need on every record of a split they read.
LABEL_FIELD = {"token-classification": "tags", "sequence-classification": "label", "question-answering": "answers"}
OPTIONAL = {
    "token-classification": ("tags",),
    "sequence-classification": ("text_pair", "label"),
    "question-answering": ("answers", "id"),
    "causal-lm": (),
}


def split_names(name: str) -> tuple[str, ...]:
    """The names a split may go by: ``validation`` is also ``dev``, ``valid``, ``val``."""
    return SPLIT_ALIASES.get(name, (name,))


def detect_format(path: Path, fmt: str, task: str) -> str:
    if fmt != "auto":
        return fmt
    ext = path.suffix.lower()
    by_ext = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "json"}
    if ext in by_ext:
        return by_ext[ext]
    if task == "token-classification":
        return "conll"
    if task == "causal-lm":
        return "text"
    raise DataError(f"{path}: cannot tell the format of a {ext or 'extension-less'} file for {task}; set data.format")


def read_file(path: Path, fmt: str, task: str) -> list[dict]:
    """Rows of one local file, in the source's own column names."""
    fmt = detect_format(path, fmt, task)
    if fmt == "conll":
        return read_conll(path)
    if fmt in ("tsv", "csv"):
        return read_table(path, delimiter="\t" if fmt == "tsv" else ",")
    if fmt == "jsonl":
        return read_jsonl(path) if path.suffix.lower() != ".json" else read_json(path)
    if fmt == "json":
        return read_json(path)
    return read_text(path)


def _find_split_file(directory: Path, split: str) -> Path | None:
    for name in split_names(split):
        for ext in EXTENSIONS:
            candidate = directory / f"{name}{ext}"
            if candidate.is_file():
                return candidate
    direct = directory / split  # a file name given as the split
    return direct if direct.is_file() else None


def _column(row: dict, field: str, columns: dict[str, str]):
    """(value, found) of canonical ``field`` in a source row."""
    names = (columns[field],) if field in columns else COLUMN_CANDIDATES[field]
    for name in names:
        if name in row:
            return row[name], True
    return None, False


def _answers(value, source: str) -> dict:
    if value is None:
        return {"text": [], "answer_start": []}
    if isinstance(value, dict) and "text" in value and "answer_start" in value:
        texts, starts = value["text"], value["answer_start"]
        if isinstance(texts, str):
            texts, starts = [texts], [starts]
        return {"text": [str(t) for t in texts], "answer_start": [int(s) for s in starts]}
    if isinstance(value, list) and all(isinstance(a, dict) for a in value):
        return {"text": [str(a["text"]) for a in value], "answer_start": [int(a["answer_start"]) for a in value]}
    raise DataError(
        f"{source}: 'answers' must be {{'text': [...], 'answer_start': [...]}} or a list of those, got {value!r}"
    )


def to_records(rows: list[dict], task: str, columns: dict[str, str] | None = None) -> list[dict]:
    """Map source rows to the task's canonical records; a missing column names the row and the fix."""
    columns = columns or {}
    records = []
    for index, row in enumerate(rows):
        source = row.get("source", f"row {index}")
        record = {"source": source}
        for field in REQUIRED[task] + OPTIONAL[task]:
            value, found = _column(row, field, columns)
            if not found and field in REQUIRED[task]:
                tried = [columns[field]] if field in columns else list(COLUMN_CANDIDATES[field])
                available = sorted(k for k in row if k != "source")
                raise DataError(
                    f"{source}: no column for {field!r} (tried {tried}); the row has {available}. "
                    f"Map it with data.columns={{{field}: <column>}}"
                )
            if found:
                record[field] = value
        if task == "token-classification":
            record["tokens"] = [str(t) for t in record["tokens"]]
            if "tags" in record:
                record["tags"] = [str(t) for t in record["tags"]]
                if len(record["tags"]) != len(record["tokens"]):
                    raise DataError(
                        f"{source}: {len(record['tokens'])} tokens but {len(record['tags'])} tags"
                    )
        elif task == "sequence-classification":
            if record.get("label") is not None:
                record["label"] = str(record["label"]).strip()
            else:
                record.pop("label", None)
            record.setdefault("text_pair", None)
        elif task == "question-answering":
            if "answers" in record:  # absent = unlabelled (predict); empty = unanswerable (SQuAD 2.0)
                record["answers"] = _answers(record["answers"], source)
            record["id"] = str(record.get("id", index))
        records.append(record)
    return records


def _check_labelled(records: list[dict], task: str, role: str, split: str, columns: dict[str, str] | None) -> None:
    """Every record of a split that trains or evaluates carries its label (checked before anything runs).

    Unlabelled rows serve ``predict`` only (its own JSONL input); a split without its label
    column would otherwise fail inside the loss, after the model was built.
    """
    field = LABEL_FIELD.get(task)
    unlabelled = [r for r in records if field not in r] if field else []
    if not unlabelled:
        return
    columns = columns or {}
    tried = [columns[field]] if field in columns else list(COLUMN_CANDIDATES[field])
    fix = (f"add the label column, map it with data.columns={{{field}: <column>}}"
           + (f", or set data.{role}_split=null to skip this split" if role != "train" else ""))
    raise DataError(
        f"{unlabelled[0]['source']}: the {role} split ({split!r}) has no {field!r} for {task} on {len(unlabelled)} of "
        f"{len(records)} examples (looked for a column named {' or '.join(map(repr, tried))}); {fix}"
    )


def _rows_from_hub_split(dataset, name: str) -> list[dict]:
    """Rows of a ``datasets.Dataset``, class-label ids replaced by their names."""
    names = {}
    for column, feature in dataset.features.items():
        inner = getattr(feature, "feature", feature)  # Sequence/List(ClassLabel) or ClassLabel
        if getattr(inner, "names", None):
            names[column] = inner.names
    rows = dataset.to_list()
    for i, row in enumerate(rows):
        for column, label_names in names.items():
            value = row[column]
            row[column] = [label_names[v] for v in value] if isinstance(value, list) else (
                label_names[value] if value is not None and value >= 0 else None)
        row["source"] = f"{name}#{i}"
    return rows


def hub_label_names(dataset, task: str, columns: dict[str, str] | None = None) -> tuple[str, ...] | None:
    """Label names in the hub dataset's own order (its ClassLabel feature), if it declares one."""
    columns = columns or {}
    field = "tags" if task == "token-classification" else "label"
    candidates = (columns[field],) if field in columns else COLUMN_CANDIDATES[field]
    for column in candidates:
        feature = dataset.features.get(column)
        inner = getattr(feature, "feature", feature)
        if getattr(inner, "names", None):
            return tuple(inner.names)
    return None


HUB_SCHEME = "hub:"


def parse_hub(candidate: str) -> tuple[str, str | None]:
    """``"hub:wikiann:en"`` -> ("wikiann", "en"); ``"hub:user/name"`` -> ("user/name", None)."""
    dataset_id, _, config_name = candidate[len(HUB_SCHEME):].partition(":")
    if not dataset_id:
        raise DataError(f"data.source {candidate!r}: write hub:<dataset id> or hub:<dataset id>:<config>")
    return dataset_id, config_name or None


def _load_hub(dataset_id: str, config_name: str | None):
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise DataError("the `datasets` package is needed for hub datasets: pip install datasets") from err
    try:
        return datasets.load_dataset(dataset_id, config_name)
    except Exception as err:  # network, unknown id or config: say which and how to fix
        raise DataError(
            f"could not load hub dataset {dataset_id!r}"
            + (f" (config {config_name!r})" if config_name else "")
            + f": {type(err).__name__}: {err}. Check the id and your network, or point data.source at local files."
        ) from err


def locate(data: DataConfig) -> tuple[str, Path | str]:
    """The first usable ``data.source`` candidate: ("local", path) if it exists, or ("hub", "hub:id[:config]")."""
    candidates = (data.source,) if isinstance(data.source, str) else tuple(data.source or ())
    if not candidates:
        raise DataError("no data: set data.source to a local directory or file, or to hub:<dataset id>[:<config>]")
    for candidate in candidates:
        if candidate.startswith(HUB_SCHEME):
            parse_hub(candidate)
            return "hub", candidate
        path = Path(resolve_path(candidate))
        if path.exists():
            return "local", path
    raise DataError(
        f"data.source: none of {list(candidates)} exists (relative paths start at {Path.cwd()}); fix the path, "
        "or add hub:<dataset id>[:<config>] to download the data"
    )


class Records(NamedTuple):
    splits: dict[str, list[dict]]  # role (train, eval, test) -> canonical records
    label_names: tuple[str, ...] | None  # label order declared by the source (a hub ClassLabel), if any
    origin: str  # the local path or hub id, for messages


def load_records(data: DataConfig, task: str, roles=("train", "eval", "test")) -> Records:
    """The run's records by role: ``train`` always, ``eval`` and ``test`` when configured and present.

    ``roles`` limits which splits are read (train is always read: it fixes the label set).
    The eval role falls back to the last ``data.holdout_fraction`` of train (contiguous,
    not shuffled: no leakage for running text) when the eval split is missing.
    ``data.max_train_examples`` / ``max_eval_examples`` then keep the first N.

    Raises:
      DataError: missing files or columns, a malformed line (file:line), an empty split.
    """
    kind, where = locate(data)
    wanted = {"train": data.train_split, "eval": data.eval_split, "test": data.test_split}
    wanted = {role: split for role, split in wanted.items() if role == "train" or role in roles}
    raw: dict[str, list[dict]] = {}
    files: dict[str, Path] = {}  # role -> the file read, for messages
    label_names = None
    if kind == "local":
        path = Path(where)
        if path.is_file():
            raw["train"], files["train"] = read_file(path, data.format, task), path
        else:
            for role, split in wanted.items():
                if split is None:
                    continue
                file = _find_split_file(path, split)
                if file is None:
                    if role == "train":
                        raise DataError(
                            f"{path}: no file for the train split {split!r} (looked for "
                            f"{', '.join(n + '.*' for n in split_names(split))}); set data.train_split"
                        )
                    continue
                raw[role], files[role] = read_file(file, data.format, task), file
    else:
        dataset = _load_hub(*parse_hub(where))
        for role, split in wanted.items():
            if split is None:
                continue
            name = next((n for n in split_names(split) if n in dataset), None)
            if name is None:
                if role == "train":
                    raise DataError(f"hub dataset {where!r} has no split {split!r}; it has {sorted(dataset)}")
                continue
            raw[role] = _rows_from_hub_split(dataset[name], f"{where}[{name}]")
            if role == "train":
                label_names = hub_label_names(dataset[name], task, data.columns)
    records = {role: to_records(rows, task, data.columns) for role, rows in raw.items()}
    for role, recs in records.items():
        _check_labelled(recs, task, role, wanted[role], data.columns)
    if "eval" not in records and data.holdout_fraction > 0 and data.eval_split is not None and "eval" in roles:
        train = records["train"]
        cut = len(train) - max(1, int(round(len(train) * data.holdout_fraction)))
        if cut < 1:
            raise DataError(f"{where}: {len(train)} train examples are too few to hold out {data.holdout_fraction}")
        records["train"], records["eval"] = train[:cut], train[cut:]
    if data.max_train_examples is not None:
        records["train"] = records["train"][: data.max_train_examples]
    if data.max_eval_examples is not None:
        for role in ("eval", "test"):
            if role in records:
                records[role] = records[role][: data.max_eval_examples]
    for role, recs in records.items():
        if not recs:
            raise DataError(
                f"{files.get(role, where)}: the {role} split ({wanted[role]!r}) holds no examples; add examples, "
                f"or point data.source / data.{role}_split at the data"
            )
    return Records(records, label_names, str(where))
