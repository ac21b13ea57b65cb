"""Per-task training losses as pure functions of (model outputs, batch).

Every loss returns ``(loss, aux)``: ``loss`` is a float32 scalar mean over the
items it counts, and ``aux`` is a dict of float32 scalar metrics that always
holds ``"weight"``, the number of items counted (valid tokens, examples). The
train step uses ``weight`` to combine microbatches exactly: the accumulated loss
is ``sum(weight_m * loss_m) / sum(weight_m)``, the same number a full batch
gives. Every other aux metric is a mean over the same items and is combined the
same way.

Conventions (those of Hugging Face ``transformers``): label ``-100`` is ignored;
causal LM shifts inside the loss (``labels`` default to ``input_ids``) and also
ignores targets whose ``attention_mask`` is 0; QA positions outside ``[0, T)``
are ignored.

Example::

    loss_fn = loss_for_task(model.task)            # e.g. "token-classification"
    loss, aux = loss_fn(model(batch["input_ids"], batch["attention_mask"]), batch)
    aux["accuracy"], aux["weight"]
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100

Batch = Mapping[str, jax.Array]
LossFn = Callable[[Any, Batch], tuple[jax.Array, dict[str, jax.Array]]]


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, valid: jax.Array) -> tuple[jax.Array, dict]:
    """Mean cross-entropy over positions where ``valid`` is True.

    Args:
      logits: (..., C) unnormalised scores, any float dtype (computed in float32).
      labels: (...) integer class ids; values at invalid positions are not read.
      valid: (...) boolean, True where the position counts.

    Returns:
      (loss, {"accuracy", "weight"}); loss and accuracy are 0 when nothing is valid.
    """
    logits = logits.astype(jnp.float32)
    safe_labels = jnp.where(valid, labels, 0).astype(jnp.int32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
    weight = valid.sum().astype(jnp.float32)
    denom = jnp.maximum(weight, 1.0)
    loss = jnp.where(valid, nll, 0.0).sum() / denom
    correct = (jnp.argmax(logits, axis=-1) == safe_labels) & valid
    return loss, {"accuracy": correct.sum() / denom, "weight": weight}


def token_classification_loss(logits: jax.Array, batch: Batch) -> tuple[jax.Array, dict]:
    """Per-token cross-entropy: logits (B, T, L), ``labels`` (B, T) with -100 ignored."""
    labels = batch["labels"]
    return masked_cross_entropy(logits, labels, labels != IGNORE_INDEX)


def sequence_classification_loss(logits: jax.Array, batch: Batch) -> tuple[jax.Array, dict]:
    """logits (B, L) against ``labels`` (B,).

    Integer labels give cross-entropy (label -100 marks a padding example).
    With a single output (L == 1) and float labels it is regression: mean squared
    error, as Hugging Face does for ``num_labels == 1``.
    """
    labels = batch["labels"]
    if logits.shape[-1] == 1 and jnp.issubdtype(labels.dtype, jnp.floating):
        err = logits[..., 0].astype(jnp.float32) - labels.astype(jnp.float32)
        weight = jnp.float32(labels.size)
        return jnp.mean(jnp.square(err)), {"mae": jnp.mean(jnp.abs(err)), "weight": weight}
    return masked_cross_entropy(logits, labels, labels != IGNORE_INDEX)


def question_answering_loss(outputs: tuple[jax.Array, jax.Array], batch: Batch) -> tuple[jax.Array, dict]:
    """Extractive QA: mean of start and end cross-entropies over tokens.

    Args:
      outputs: (start_logits, end_logits), each (B, T).
      batch: ``start_positions`` and ``end_positions`` (B,); a position outside
        [0, T) (including -100) drops that example from the loss.

    Returns:
      (loss, {"start_accuracy", "end_accuracy", "exact_match", "weight"}).
    """
    start_logits, end_logits = outputs
    length = start_logits.shape[-1]
    start, end = batch["start_positions"], batch["end_positions"]
    valid = (start >= 0) & (start < length) & (end >= 0) & (end < length)
    start_loss, start_aux = masked_cross_entropy(start_logits, start, valid)
    end_loss, end_aux = masked_cross_entropy(end_logits, end, valid)
    both = (jnp.argmax(start_logits, -1) == start) & (jnp.argmax(end_logits, -1) == end) & valid
    weight = start_aux["weight"]
    return (start_loss + end_loss) / 2, {
        "start_accuracy": start_aux["accuracy"],
        "end_accuracy": end_aux["accuracy"],
        "exact_match": both.sum() / jnp.maximum(weight, 1.0),
        "weight": weight,
    }


def causal_lm_loss(logits: jax.Array, batch: Batch) -> tuple[jax.Array, dict]:
    """Next-token cross-entropy: position t predicts token t+1.

    ``labels`` (B, T) default to ``input_ids``; a target counts when its label is
    not -100 and (when ``attention_mask`` is given) it is a real token.
    """
    labels = batch.get("labels", batch["input_ids"])
    targets = labels[:, 1:]
    valid = targets != IGNORE_INDEX
    if "attention_mask" in batch:
        valid = valid & batch["attention_mask"][:, 1:].astype(bool)
    return masked_cross_entropy(logits[:, :-1], targets, valid)


def masked_lm_loss(logits: jax.Array, batch: Batch) -> tuple[jax.Array, dict]:
    """Masked LM: logits (B, T, V) against ``labels`` (B, T), -100 where not masked."""
    labels = batch["labels"]
    return masked_cross_entropy(logits, labels, labels != IGNORE_INDEX)


TASK_LOSSES: dict[str, LossFn] = {
    "token-classification": token_classification_loss,
    "sequence-classification": sequence_classification_loss,
    "question-answering": question_answering_loss,
    "causal-lm": causal_lm_loss,
    "masked-lm": masked_lm_loss,
}


def loss_for_task(task: str) -> LossFn:
    """The loss for a model's ``task`` attribute."""
    if task not in TASK_LOSSES:
        raise ValueError(
            f"no training loss for task {task!r}; tasks with a loss: {sorted(TASK_LOSSES)}. "
            "Pass loss_fn=... to train a bare model."
        )
    return TASK_LOSSES[task]
