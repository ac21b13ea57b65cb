"""Predictions for raw rows, decoded to names: entity spans, class names, answers.

Example::

    for result in predict_rows(trainer, [{"text": "John lives in Paris"}]):
        print(result)   # {"text": ..., "entities": [{"type": "PER", "text": "John", ...}, ...]}
"""

from __future__ import annotations

import numpy as np

from jaxkernel.data.labels import entities
from jaxkernel.data.loader import DataLoader
from jaxkernel.data.pipeline import TaskData, encode_rows
from jaxkernel.data.qa import best_answers
from jaxkernel.train.evaluate import decode_token_predictions, run_outputs


def _no_loss(outputs, batch):
    return 0.0, {"weight": 0.0}


def predict_rows(trainer, rows: list[dict]) -> list[dict]:
    config, data = trainer.config, trainer.data
    task = config.model.task
    if task == "causal-lm":
        raise ValueError("predict decodes labels; for GPT-2 language models use `jaxkernel generate`")
    records, features = encode_rows(rows, config, data.tokenizer, data.labels)
    view = TaskData(task, data.tokenizer, data.labels, {"predict": records}, {"predict": features}, data.buckets)
    loader = DataLoader(features, config.eval.batch_size or config.train.batch_size, shuffle=False,
                        drop_remainder=False, buckets=data.buckets)
    from jaxkernel.train.step import make_eval_step

    eval_step = make_eval_step(trainer.model_def, loss_fn=_no_loss)
    results: dict[int, dict] = {}
    starts, ends, qa_rows = {}, {}, []
    for feature_rows, _, outputs in run_outputs(eval_step, trainer.state, loader, trainer.to_device):
        real = feature_rows >= 0
        if task == "token-classification":
            for row, tags in decode_token_predictions(view, "predict", feature_rows, outputs).items():
                record = records[int(features.example_index[row])]
                results[int(features.example_index[row])] = {
                    "tokens": record["tokens"], "tags": tags, "entities": entities(record["tokens"], tags)}
        elif task == "sequence-classification":
            probs = np.exp(outputs - outputs.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            for row, p in zip(feature_rows[real], probs[real]):
                results[int(row)] = {"label": data.labels[int(p.argmax())], "score": float(p.max())}
        else:
            for row, s, e in zip(feature_rows[real], outputs[0][real], outputs[1][real]):
                starts[int(row)], ends[int(row)] = s, e
                qa_rows.append(int(row))
    if task == "question-answering":
        order = sorted(qa_rows)
        answers = best_answers(features, records, [starts[r] for r in order], [ends[r] for r in order],
                               n_best_size=config.task.n_best_size, max_answer_length=config.task.max_answer_length)
        return [{**rows[i], "answer": answers[records[i]["id"]]} for i in range(len(records))]
    return [{**rows[i], **results[i]} for i in range(len(records))]
