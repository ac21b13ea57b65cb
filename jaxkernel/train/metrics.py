"""Task metrics computed on the host from gathered predictions (pure functions).

- classification: accuracy and macro-F1 over classes;
- NER: seqeval entity precision / recall / F1 (word level, IOB2 spans);
- extractive QA: SQuAD exact match and token F1 (official normalisation);
- LM: token-weighted loss and perplexity.

Example::

    classification_metrics(pred=[0, 1, 1], gold=[0, 1, 0])   # {"accuracy": 0.667, "macro_f1": 0.667}
"""

from __future__ import annotations

import collections
import math
import re
import string
from typing import Sequence

import numpy as np


def classification_metrics(pred: Sequence[int], gold: Sequence[int], num_labels: int | None = None) -> dict:
    pred, gold = np.asarray(pred), np.asarray(gold)
    if len(pred) != len(gold) or len(gold) == 0:
        raise ValueError(f"need equally many predictions and labels, got {len(pred)} and {len(gold)}")
    classes = range(num_labels) if num_labels else sorted(set(gold.tolist()) | set(pred.tolist()))
    f1s = []
    for c in classes:
        tp = np.sum((pred == c) & (gold == c))
        fp, fn = np.sum((pred == c) & (gold != c)), np.sum((pred != c) & (gold == c))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float(np.mean(pred == gold)), "macro_f1": float(np.mean(f1s))}


def ner_metrics(pred_tags: Sequence[Sequence[str]], gold_tags: Sequence[Sequence[str]]) -> dict:
    """seqeval's entity-level scores (default, lenient IOB mode) plus token accuracy."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    pred_tags, gold_tags = [list(p) for p in pred_tags], [list(g) for g in gold_tags]
    correct = sum(p == g for ps, gs in zip(pred_tags, gold_tags) for p, g in zip(ps, gs))
    total = sum(len(g) for g in gold_tags)
    return {
        "precision": float(precision_score(gold_tags, pred_tags, zero_division=0)),
        "recall": float(recall_score(gold_tags, pred_tags, zero_division=0)),
        "f1": float(f1_score(gold_tags, pred_tags, zero_division=0)),
        "accuracy": correct / max(total, 1),
    }


def _normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(prediction: str, truth: str) -> float:
    pred, gold = _normalize_answer(prediction).split(), _normalize_answer(truth).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if not pred or not gold:
        return float(pred == gold)
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def qa_metrics(predictions: dict[str, str], references: dict[str, Sequence[str]]) -> dict:
    """SQuAD v1 exact match and F1 (best over the gold answers), in percent-free [0, 1]."""
    if not references:
        raise ValueError("no QA references to score")
    em = f1 = 0.0
    for qid, answers in references.items():
        prediction = predictions.get(qid, "")
        answers = list(answers) or [""]
        em += max(float(_normalize_answer(prediction) == _normalize_answer(a)) for a in answers)
        f1 += max(_token_f1(prediction, a) for a in answers)
    return {"exact_match": em / len(references), "f1": f1 / len(references)}


def lm_metrics(loss_sum: float, token_count: float) -> dict:
    loss = loss_sum / max(token_count, 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
