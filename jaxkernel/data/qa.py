"""Extractive QA: (question, context) -> token windows with answer positions, and back to answer text.

A context longer than the window is cut into overlapping windows when ``doc_stride``
is set (Hugging Face's ``stride``: tokens shared by consecutive windows), else
truncated. A window that does not hold the whole answer points both positions at
``[CLS]`` (index 0), as SQuAD 2.0 fine-tuning does. ``best_answers`` reverses this:
it scores start/end pairs over every window of a question and returns the best span
of the original context.

Example::

    features = encode_question_answering(records, tokenizer, max_length=384, doc_stride=128)
    answers = best_answers(features, records, start_logits, end_logits)   # {id: text}
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxkernel.data.encode import CHUNK, Features, pad_id_of, uses_token_types
from jaxkernel.data.readers import DataError

CLS_INDEX = 0


def _answer_span(record: dict) -> tuple[int, int] | None:
    """(start_char, end_char) of the first answer, None when unanswerable; checked against the context."""
    texts, starts = record["answers"]["text"], record["answers"]["answer_start"]
    if not texts:
        return None
    start, text = int(starts[0]), texts[0]
    end = start + len(text)
    if not 0 <= start <= end <= len(record["context"]):
        raise DataError(
            f"{record['source']}: answer {text!r} at character {start} lies outside its context of "
            f"{len(record['context'])} characters"
        )
    return start, end


def _positions(span, offsets, sequence_ids) -> tuple[int, int]:
    """Token (start, end) of a character span in one window; (0, 0) when it is not wholly inside."""
    if span is None:
        return CLS_INDEX, CLS_INDEX
    context = [j for j, s in enumerate(sequence_ids) if s == 1]
    if not context:
        return CLS_INDEX, CLS_INDEX
    first, last = context[0], context[-1]
    start_char, end_char = span
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return CLS_INDEX, CLS_INDEX
    start = first
    while start <= last and offsets[start][0] <= start_char:
        start += 1
    end = last
    while end >= first and offsets[end][1] >= end_char:
        end -= 1
    return start - 1, end + 1


def encode_question_answering(
    records: Sequence[dict], tokenizer, *, max_length: int, doc_stride: int | None = None
) -> Features:
    """Tokenize (question, context) pairs; the context is truncated or windowed, never the question.

    Returns ``Features`` with scalars ``start_positions`` / ``end_positions`` (when the
    records carry answers), ``example_index`` (window -> record) and ``offsets``
    (per token character span in the context, (-1, -1) for question and special tokens).
    """
    with_answers = all("answers" in r for r in records)  # an empty answer list = unanswerable -> [CLS]
    input_ids, type_ids, offsets_out, example_index, starts, ends = [], [], [], [], [], []
    for base in range(0, len(records), CHUNK):
        chunk = records[base:base + CHUNK]
        enc = tokenizer(
            [str(r["question"]).lstrip() for r in chunk], [str(r["context"]) for r in chunk],
            truncation="only_second", max_length=max_length, stride=doc_stride or 0,
            return_overflowing_tokens=doc_stride is not None, return_offsets_mapping=True,
        )
        sample_of = enc["overflow_to_sample_mapping"] if doc_stride is not None else range(len(chunk))
        for i, sample in enumerate(sample_of):
            record = chunk[sample]
            sequence_ids = enc.sequence_ids(i)
            offsets = np.asarray(enc["offset_mapping"][i], dtype=np.int32).reshape(-1, 2)
            offsets[[s != 1 for s in sequence_ids]] = -1
            input_ids.append(np.asarray(enc["input_ids"][i], dtype=np.int32))
            if "token_type_ids" in enc:
                type_ids.append(np.asarray(enc["token_type_ids"][i], dtype=np.int32))
            offsets_out.append(offsets)
            example_index.append(base + sample)
            if with_answers:
                start, end = _positions(_answer_span(record), enc["offset_mapping"][i], sequence_ids)
                starts.append(start)
                ends.append(end)
    sequences = {"input_ids": input_ids}
    if type_ids and uses_token_types(tokenizer):
        sequences["token_type_ids"] = type_ids
    scalars = {}
    if with_answers:
        scalars = {"start_positions": np.asarray(starts, np.int32), "end_positions": np.asarray(ends, np.int32)}
    return Features("question-answering", sequences, scalars, pad_id_of(tokenizer),
                    np.asarray(example_index, np.int32), offsets=offsets_out)


def best_answers(
    features: Features,
    records: Sequence[dict],
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    *,
    n_best_size: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """The best-scoring context span per question over all its windows.

    Args:
      features: from ``encode_question_answering``.
      records: the records they were encoded from (for ids and contexts).
      start_logits / end_logits: per feature, in feature order, each (T_padded,) or (T,).
      n_best_size: candidate starts and ends tried per window.
      max_answer_length: longest span in tokens.

    Returns:
      ``{record id: answer text}``; "" when no valid span exists.
    """
    best: dict[int, tuple[float, str]] = {}
    for f, example in enumerate(features.example_index):
        offsets = features.offsets[f]
        n = len(offsets)
        start_l, end_l = np.asarray(start_logits[f])[:n], np.asarray(end_logits[f])[:n]
        context = records[example]["context"]
        top_starts = np.argsort(start_l)[::-1][:n_best_size]
        top_ends = np.argsort(end_l)[::-1][:n_best_size]
        for s in top_starts:
            if offsets[s][0] < 0:
                continue
            for e in top_ends:
                if offsets[e][0] < 0 or e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(start_l[s] + end_l[e])
                if example not in best or score > best[example][0]:
                    best[example] = (score, context[offsets[s][0]:offsets[e][1]])
    return {records[i]["id"]: best.get(i, (0.0, ""))[1] for i in sorted(set(int(x) for x in features.example_index))}
