"""Evaluation and prediction over a loader: run the jitted eval step, decode on the host.

The eval step returns per-batch outputs (logits, or QA start/end logits); rows
whose ``index`` is -1 are padding of the last batch and are dropped here.

Example::

    metrics = evaluate_split(eval_step, state, loader, data, "eval", to_device)
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from jaxkernel.data.labels import ids_to_tags, word_predictions
from jaxkernel.data.loader import DataLoader
from jaxkernel.data.qa import best_answers
from jaxkernel.train.metrics import classification_metrics, lm_metrics, ner_metrics, qa_metrics


def _host(x) -> np.ndarray:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def run_outputs(eval_step: Callable, state, loader: DataLoader, to_device: Callable):
    """Iterate one pass: yields (global feature rows, loss metrics, host outputs) per batch."""
    loader.epoch, loader.index = 0, 0
    for index in range(len(loader)):
        batch = loader.batch(0, index)
        rows = loader.global_indices(0, index)
        metrics, outputs = eval_step(state, to_device(batch))
        yield rows, {k: float(v) for k, v in metrics.items()}, jax.tree.map(_host, outputs)


def decode_token_predictions(task_data, role: str, rows, logits) -> dict[int, list[str]]:
    """Feature row -> predicted tag per word of its sentence (first sub-token decides)."""
    features, records, labels = task_data.features[role], task_data.records[role], task_data.labels
    outside = labels.index("O") if "O" in labels else 0
    preds = np.argmax(logits, axis=-1)
    out = {}
    for row, pred in zip(rows, preds):
        if row < 0:
            continue
        words = records[int(features.example_index[row])]["tokens"]
        ids = word_predictions(pred, features.word_ids[row], len(words), outside)
        out[int(row)] = ids_to_tags(ids, labels)
    return out


def evaluate_split(eval_step: Callable, state, loader: DataLoader, task_data, role: str, to_device: Callable) -> dict:
    """The task's metrics on one split (loss always; f1/accuracy/EM/perplexity by task)."""
    task = task_data.task
    loss_sum = weight_sum = 0.0
    token_preds: dict[int, list[str]] = {}
    class_preds, class_gold = [], []
    starts, ends, qa_rows = [], [], []
    for rows, metrics, outputs in run_outputs(eval_step, state, loader, to_device):
        loss_sum += metrics["loss"] * metrics["weight"]
        weight_sum += metrics["weight"]
        real = rows >= 0
        if task == "token-classification":
            token_preds.update(decode_token_predictions(task_data, role, rows, outputs))
        elif task == "sequence-classification":
            class_preds.extend(np.argmax(outputs, -1)[real].tolist())
            class_gold.extend(task_data.features[role].scalars["labels"][rows[real]].tolist())
        elif task == "question-answering":
            starts.extend(outputs[0][real])
            ends.extend(outputs[1][real])
            qa_rows.extend(rows[real].tolist())
    result = {"loss": loss_sum / max(weight_sum, 1.0)}
    if task == "token-classification":
        features, records = task_data.features[role], task_data.records[role]
        order = sorted(token_preds)
        gold = [records[int(features.example_index[r])]["tags"] for r in order]
        result.update(ner_metrics([token_preds[r] for r in order], gold))
    elif task == "sequence-classification":
        result.update(classification_metrics(class_preds, class_gold, len(task_data.labels)))
    elif task == "question-answering":
        result.update(_qa(task_data, role, qa_rows, starts, ends))
    elif task == "causal-lm":
        result.update(lm_metrics(loss_sum, weight_sum))
    return result


def _qa(task_data, role, rows, starts, ends) -> dict:
    features, records = task_data.features[role], task_data.records[role]
    order = np.argsort(rows)
    assert list(np.asarray(rows)[order]) == list(range(len(features))), "every QA window must be scored once"
    answers = best_answers(features, records, [starts[i] for i in order], [ends[i] for i in order])
    references = {r["id"]: r["answers"]["text"] for r in records}
    return qa_metrics(answers, references)
