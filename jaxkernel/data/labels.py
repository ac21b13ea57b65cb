"""Label sets and decoding: names <-> ids, NER tag sequences -> entity spans.

``collect_labels`` derives a stable label order from training records when the config
gives none; ``label_id`` turns a record's label into its class id with an error that
names the record; the NER helpers turn model predictions back into tags and entities
for ``predict`` and for the seqeval metric.

Example::

    labels = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
    tags = ids_to_tags([1, 2, 0, 3], labels)          # ["B-PER", "I-PER", "O", "B-LOC"]
    tags_to_spans(tags)                                # [("PER", 0, 2), ("LOC", 3, 4)]
    entities(["Ada", "Lovelace", "in", "London"], tags)
    # [{"type": "PER", "start": 0, "end": 2, "text": "Ada Lovelace"},
    #  {"type": "LOC", "start": 3, "end": 4, "text": "London"}]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from jaxkernel.data.readers import DataError

IGNORE_INDEX = -100  # label of positions and padding rows that no loss or metric counts
OUTSIDE = "O"


def _entity_sort_key(tag: str):
    prefix, _, kind = tag.partition("-")
    return (kind, {"B": 0, "I": 1, "E": 2, "S": 3}.get(prefix, 4), prefix) if kind else ("", 9, tag)


def collect_labels(records: Iterable[dict], task: str) -> tuple[str, ...]:
    """The label names found in ``records``, in a stable order.

    NER: ``O`` first, then per entity type (alphabetical) its ``B-`` then ``I-`` tag.
    Classification: numeric order when every label is an integer, else alphabetical.
    """
    if task == "token-classification":
        found = {tag for r in records for tag in r.get("tags", ())}
        rest = sorted(found - {OUTSIDE}, key=_entity_sort_key)
        return ((OUTSIDE,) if OUTSIDE in found else ()) + tuple(rest)
    if task == "sequence-classification":
        found = {r["label"] for r in records if r.get("label") is not None}
        if all(_is_int(v) for v in found):
            return tuple(sorted(found, key=int))
        return tuple(sorted(found))
    raise ValueError(f"task {task!r} has no label set")


def _is_int(value: str) -> bool:
    try:
        int(value)
    except (TypeError, ValueError):
        return False
    return True


def label_id(value: str, label2id: dict[str, int], source: str) -> int:
    """The class id of ``value``: its name, or else an integer index into the label list.

    The index fallback lets a TSV with ``0``/``1`` labels train a head whose labels are
    named (``model.labels=[negative, positive]``).
    """
    if value in label2id:
        return label2id[value]
    if _is_int(value) and 0 <= int(value) < len(label2id) and not any(_is_int(k) for k in label2id):
        return int(value)
    raise DataError(
        f"{source}: label {value!r} is not in the label set {list(label2id)}; add it to model.labels "
        "or fix the data"
    )


def b_to_i(labels: Sequence[str]) -> np.ndarray:
    """For each label id, the id its continuation sub-tokens get with task.label_all_tokens (B-X -> I-X)."""
    index = {name: i for i, name in enumerate(labels)}
    out = np.arange(len(labels), dtype=np.int32)
    for i, name in enumerate(labels):
        if name.startswith("B-") and "I-" + name[2:] in index:
            out[i] = index["I-" + name[2:]]
    return out


def ids_to_tags(ids: Iterable[int], labels: Sequence[str]) -> list[str]:
    """Class ids -> tag names; out-of-range ids are an error (never a silent O)."""
    out = []
    for i in ids:
        i = int(i)
        if not 0 <= i < len(labels):
            raise ValueError(f"label id {i} is outside the {len(labels)} labels {list(labels)}")
        out.append(labels[i])
    return out


def word_predictions(token_ids: Sequence[int], word_ids: Sequence[int], num_words: int, fill: int) -> np.ndarray:
    """Per-word prediction from per-token predictions: the word's first sub-token decides.

    Args:
      token_ids: predicted class id per token position (argmax of the logits), shape (T,).
      word_ids: word index per token, -1 for special tokens and padding (``Features.word_ids``).
      num_words: words in the original sentence.
      fill: id given to words with no token in the window (truncated away), e.g. the id of ``O``.

    Returns:
      int32 array (num_words,).
    """
    out = np.full(num_words, fill, dtype=np.int32)
    seen = np.zeros(num_words, dtype=bool)
    for pred, word in zip(token_ids, word_ids):
        word = int(word)
        if 0 <= word < num_words and not seen[word]:
            out[word], seen[word] = int(pred), True
    return out


def tags_to_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """IOB2 (or IOB1/IOBES) tags -> ``(type, start, end)`` spans, ``end`` exclusive.

    Lenient like seqeval's default mode: an ``I-X`` that does not continue an ``X`` entity
    starts a new one.
    """
    spans: list[tuple[str, int, int]] = []
    kind, start = None, 0
    for i, tag in enumerate(tags):
        prefix, _, this = tag.partition("-")
        if not this:  # "O" or a malformed tag: outside any entity
            prefix, this = OUTSIDE, None
        if kind is not None and (this is None or prefix in ("B", "S") or this != kind):
            spans.append((kind, start, i))
            kind = None
        if this is not None and kind is None:
            kind, start = this, i
        if prefix in ("E", "S") and kind is not None:
            spans.append((kind, start, i + 1))
            kind = None
    if kind is not None:
        spans.append((kind, start, len(tags)))
    return spans


def entities(tokens: Sequence[str], tags: Sequence[str]) -> list[dict]:
    """Entity dicts ``{"type", "start", "end", "text"}`` (word offsets, end exclusive) for ``predict``."""
    if len(tokens) != len(tags):
        raise ValueError(f"{len(tokens)} tokens but {len(tags)} tags")
    return [
        {"type": kind, "start": start, "end": end, "text": " ".join(tokens[start:end])}
        for kind, start, end in tags_to_spans(tags)
    ]
