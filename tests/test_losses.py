"""Losses against PyTorch / Hugging Face conventions, on hand-made logits."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxkernel.train.losses import (
    causal_lm_loss,
    loss_for_task,
    masked_lm_loss,
    question_answering_loss,
    sequence_classification_loss,
    token_classification_loss,
)

RNG = np.random.RandomState(0)


def _torch_ce(logits, labels):
    return F.cross_entropy(torch.tensor(logits).reshape(-1, logits.shape[-1]), torch.tensor(labels).reshape(-1),
                           ignore_index=-100).item()


def test_token_classification_ignores_minus_100():
    logits = RNG.randn(2, 5, 4).astype(np.float32)
    labels = np.array([[0, 1, -100, 3, 2], [-100, -100, 1, 1, 0]])
    loss, aux = token_classification_loss(logits, {"labels": labels})
    np.testing.assert_allclose(loss, _torch_ce(logits, labels), rtol=1e-6)
    valid = labels != -100
    assert aux["weight"] == valid.sum()
    np.testing.assert_allclose(aux["accuracy"], (logits.argmax(-1) == labels)[valid].mean(), rtol=1e-6)


def test_sequence_classification_and_regression():
    logits = RNG.randn(4, 3).astype(np.float32)
    labels = np.array([2, 0, 1, 1])
    loss, aux = sequence_classification_loss(logits, {"labels": labels})
    np.testing.assert_allclose(loss, _torch_ce(logits, labels), rtol=1e-6)
    assert aux["weight"] == 4
    scores = RNG.randn(4, 1).astype(np.float32)
    targets = RNG.randn(4).astype(np.float32)
    loss, aux = sequence_classification_loss(scores, {"labels": targets})
    np.testing.assert_allclose(loss, np.mean((scores[:, 0] - targets) ** 2), rtol=1e-6)


def test_question_answering_matches_hf_and_drops_out_of_range():
    start, end = RNG.randn(3, 6).astype(np.float32), RNG.randn(3, 6).astype(np.float32)
    batch = {"start_positions": np.array([1, 4, 9]), "end_positions": np.array([2, 5, 9])}
    loss, aux = question_answering_loss((start, end), batch)
    # HF: clamp to [0, T] and ignore index T, mean of the two losses.
    s = torch.tensor(batch["start_positions"]).clamp(0, 6)
    e = torch.tensor(batch["end_positions"]).clamp(0, 6)
    expected = (F.cross_entropy(torch.tensor(start), s, ignore_index=6) + F.cross_entropy(torch.tensor(end), e, ignore_index=6)) / 2
    np.testing.assert_allclose(loss, expected.item(), rtol=1e-6)
    assert aux["weight"] == 2


def test_causal_lm_shifts_and_masks():
    logits = RNG.randn(2, 5, 7).astype(np.float32)
    ids = RNG.randint(0, 7, (2, 5))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    loss, aux = causal_lm_loss(logits, {"input_ids": ids, "attention_mask": mask})
    labels = np.where(mask == 1, ids, -100)
    expected = _torch_ce(logits[:, :-1], labels[:, 1:])  # HF GPT2LMHeadModel's shift
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert aux["weight"] == 4 + 2
    explicit = np.where(np.arange(5) < 2, -100, ids)  # prompt tokens masked out by the user
    loss, aux = causal_lm_loss(logits, {"input_ids": ids, "labels": explicit})
    np.testing.assert_allclose(loss, _torch_ce(logits[:, :-1], explicit[:, 1:]), rtol=1e-6)


def test_masked_lm_and_all_ignored_is_zero():
    logits = RNG.randn(2, 4, 9).astype(np.float32)
    labels = np.array([[-100, 3, -100, -100], [8, -100, -100, 0]])
    loss, _ = masked_lm_loss(logits, {"labels": labels})
    np.testing.assert_allclose(loss, _torch_ce(logits, labels), rtol=1e-6)
    loss, aux = masked_lm_loss(logits, {"labels": np.full((2, 4), -100)})
    assert float(loss) == 0.0 and float(aux["weight"]) == 0.0


def test_loss_for_task():
    assert loss_for_task("causal-lm") is causal_lm_loss
    with pytest.raises(ValueError, match="feature-extraction.*tasks with a loss"):
        loss_for_task("feature-extraction")
