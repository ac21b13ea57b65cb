"""From a ``Config`` to tokenized splits and loaders: the one entry point training uses.

Example::

    from jaxkernel.config import load_config
    from jaxkernel.data import build_task_data, build_loader

    config = load_config("configs/bert_ner_lora.yaml")
    data = build_task_data(config)            # reads, tokenizes, fixes the label set
    data.labels                               # ("O", "B-PER", "I-PER", ...) -> model head
    train = build_loader(data, config, "train", process_index=0, process_count=1)
    for batch in train: ...
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxkernel.config import Config
from jaxkernel.data.encode import Features, encode, load_tokenizer
from jaxkernel.data.labels import collect_labels
from jaxkernel.data.loader import DataLoader, default_buckets
from jaxkernel.data.readers import DataError
from jaxkernel.data.sources import Records, load_records, to_records

LABELLED_TASKS = ("token-classification", "sequence-classification")


@dataclasses.dataclass
class TaskData:
    """Everything data-related a run needs, by role (``train``, ``eval``, ``test``).

    Attributes:
      task: the model task.
      tokenizer: the fast tokenizer (save it next to exported models).
      labels: label names, index = class id (None for QA and LM): give them to the model head.
      records: canonical records per role (for metrics that need words, contexts, answers).
      features: tokenized features per role.
      buckets: padded lengths every loader of the run uses.
    """

    task: str
    tokenizer: Any
    labels: tuple[str, ...] | None
    records: dict[str, list[dict]]
    features: dict[str, Features]
    buckets: tuple[int, ...]


def run_buckets(config: Config) -> tuple[int, ...]:
    d = config.data
    return d.buckets or default_buckets(d.max_length, d.min_bucket, d.bucket_multiple)


def resolve_labels(config: Config, records: Records) -> tuple[str, ...] | None:
    """model.labels, else the source's declared order (hub ClassLabel), else collected from train."""
    task = config.model.task
    if task not in LABELLED_TASKS:
        return None
    labels = config.model.labels or records.label_names or collect_labels(records.splits["train"], task)
    if not labels:
        raise DataError(f"{records.origin}: the train split carries no labels for {task}")
    if config.model.num_labels is not None and config.model.num_labels != len(labels):
        raise DataError(
            f"model.num_labels={config.model.num_labels} but the data has {len(labels)} labels {list(labels)}; "
            "fix model.num_labels or list the names in model.labels"
        )
    return tuple(labels)


def build_task_data(config: Config, *, tokenizer=None, roles=("train", "eval", "test")) -> TaskData:
    """Read, label and tokenize the configured splits.

    Args:
      config: the run config (``model``, ``task`` and ``data`` sections are used).
      tokenizer: an already loaded tokenizer; default: from model.tokenizer or model.path.
      roles: which of train / eval / test to tokenize (train is always read: it fixes the labels).

    Raises:
      DataError: unreadable data (file:line), labels outside the label set, empty splits.
    """
    records = load_records(config.data, config.model.task, roles)
    labels = resolve_labels(config, records)
    if tokenizer is None:
        tokenizer = load_tokenizer(config.model.tokenizer or config.model.path,
                                   split_words=config.model.task == "token-classification")
    kept = {role: recs for role, recs in records.splits.items() if role in roles}
    features = {role: encode(recs, config.model.task, tokenizer, labels, config.data, config.task)
                for role, recs in kept.items()}
    return TaskData(config.model.task, tokenizer, labels, kept, features, run_buckets(config))


def build_loader(
    data: TaskData, config: Config, role: str, *, process_index: int = 0, process_count: int = 1
) -> DataLoader:
    """The loader of one role: train shuffles by (train.seed, epoch), grouped by length
    (``data.group_by_length``), and drops the partial batch; eval and test are sorted by length
    (less padding; metrics do not depend on the order) and pad the last batch (rows with ``index`` -1).

    ``train.batch_size`` is one micro-batch. The trainer builds its own train loader of
    ``k * train.batch_size`` rows (``optimizer.grad_accum_steps`` = k) and the jitted step splits
    each such batch into k micro-batches; this function serves eval, test and predict.
    """
    if role not in data.features:
        raise DataError(f"this run has no {role} split (it has {sorted(data.features)}); check data.{role}_split")
    train = role == "train"
    batch_size = config.train.batch_size if train else (config.eval.batch_size or config.train.batch_size)
    return DataLoader(
        data.features[role], batch_size, shuffle=train, seed=config.train.seed, drop_remainder=train,
        buckets=data.buckets, group_by_length=config.data.group_by_length if train else 1,
        process_index=process_index, process_count=process_count,
    )


def encode_rows(
    rows: list[dict], config: Config, tokenizer, labels: tuple[str, ...] | None
) -> tuple[list[dict], Features]:
    """``predict``: source rows (e.g. JSONL objects) -> (canonical records, features), labels optional.

    A token-classification row may give ``text`` instead of ``tokens``: it is split on whitespace.
    """
    task = config.model.task
    rows = [
        {**row, "tokens": str(row["text"]).split()} if task == "token-classification" and "tokens" not in row
        and "text" in row else row
        for row in rows
    ]
    records = to_records(rows, task, config.data.columns)
    if not records:
        raise DataError("no rows to predict")
    return records, encode(records, task, tokenizer, labels, config.data, config.task)
