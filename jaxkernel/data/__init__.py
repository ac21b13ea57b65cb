"""Datasets for training and prediction: read, label, tokenize, batch.

The usual path is ``build_task_data(config)`` then ``build_loader(data, config, role)``;
the pieces below are public for notebooks, ``predict`` and metrics.

Example::

    config = load_config("configs/bert_sst2_lora.yaml")
    data = build_task_data(config)
    loader = build_loader(data, config, "train")
    batch = next(iter(loader))   # {"input_ids", "attention_mask", "token_type_ids", "labels", "index"}
"""

from jaxkernel.data.encode import (
    Features,
    encode,
    encode_causal_lm,
    encode_sequence_classification,
    encode_token_classification,
    load_tokenizer,
)
from jaxkernel.data.labels import (
    IGNORE_INDEX,
    collect_labels,
    entities,
    ids_to_tags,
    label_id,
    tags_to_spans,
    word_predictions,
)
from jaxkernel.data.loader import MODEL_INPUTS, TARGETS, DataLoader, bucket_for, collate, default_buckets
from jaxkernel.data.pipeline import TaskData, build_loader, build_task_data, encode_rows, resolve_labels
from jaxkernel.data.qa import best_answers, encode_question_answering
from jaxkernel.data.readers import DataError, read_conll, read_json, read_jsonl, read_table, read_text
from jaxkernel.data.sources import Records, load_records, to_records
