"""The pure train/eval steps on one device: accumulation, RNG, trainable subsets."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from jaxkernel.models.bert import BertConfig, BertForTokenClassification
from jaxkernel.models.gpt2 import Gpt2Config, Gpt2LMHeadModel
from jaxkernel.train.step import init_train_state, make_eval_step, make_train_step, model_from_state

BERT = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
            max_position_embeddings=16, num_labels=3)
GPT2 = dict(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=16, bos_token_id=1, eos_token_id=2)
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _bert_batch(batch=4, length=8, seed=0):
    rng = np.random.RandomState(seed)
    mask = np.ones((batch, length), np.int32)
    mask[1, 5:] = 0
    mask[3, 2:] = 0
    labels = np.where(mask == 1, rng.randint(0, 3, (batch, length)), -100)
    return {"input_ids": rng.randint(1, 64, (batch, length)).astype(np.int32), "attention_mask": mask,
            "token_type_ids": np.zeros((batch, length), np.int32), "labels": labels.astype(np.int32)}


def _params(state):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]


def test_loss_decreases_and_eval_step():
    tx = optax.adam(1e-2)
    model_def, state = init_train_state(BertForTokenClassification(BertConfig(**BERT), rngs=nnx.Rngs(0)), tx)
    step = make_train_step(model_def, tx)
    batch = _bert_batch()
    losses = []
    for _ in range(5):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]
    assert int(state.step) == 5
    assert set(metrics) >= {"loss", "accuracy", "weight", "grad_norm"}
    assert float(metrics["weight"]) == (batch["labels"] != -100).sum()
    metrics, logits = make_eval_step(model_def)(state, batch)
    assert logits.shape == (4, 8, 3)
    model = model_from_state(model_def, state)
    np.testing.assert_allclose(model(batch["input_ids"], batch["attention_mask"]), logits, rtol=1e-6, atol=1e-6)


def test_microbatches_equal_full_batch():
    """Uneven token counts per microbatch: the weighted combination is exact."""
    tx = optax.sgd(0.5)
    batch = _bert_batch(batch=4)
    results = []
    for microbatches in (1, 2, 4):
        model = BertForTokenClassification(BertConfig(**BERT, **NO_DROPOUT), rngs=nnx.Rngs(0))
        model_def, state = init_train_state(model, tx)
        state, metrics = make_train_step(model_def, tx, microbatches=microbatches)(state, batch)
        results.append((float(metrics["loss"]), float(metrics["weight"]), _params(state)))
    for loss, weight, params in results[1:]:
        np.testing.assert_allclose(loss, results[0][0], rtol=1e-6)
        assert weight == results[0][1]
        for a, b in zip(params, results[0][2]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="batch size 4 is not divisible by microbatches=3"):
        make_train_step(model_def, tx, microbatches=3)(state, batch)


def test_dropout_is_a_pure_function_of_seed_and_step():
    tx = optax.sgd(0.0)  # parameters never move: only dropout changes the loss
    batch = {"input_ids": np.random.RandomState(0).randint(0, 64, (2, 8)).astype(np.int32)}

    def losses(seed, steps=2):
        model = Gpt2LMHeadModel(Gpt2Config(**GPT2), rngs=nnx.Rngs(0))
        model_def, state = init_train_state(model, tx, seed=seed)
        step = make_train_step(model_def, tx)
        out = []
        for _ in range(steps):
            state, metrics = step(state, batch)
            out.append(float(metrics["loss"]))
        return out, model_def, state

    a, model_def, state = losses(0)
    b, _, _ = losses(0)
    c, _, _ = losses(1)
    assert a == b  # same seed, same masks
    assert a[0] != a[1]  # new masks each step
    assert a != c
    eval_loss = float(make_eval_step(model_def)(state, batch)[0]["loss"])
    assert eval_loss not in a  # eval runs without dropout
    assert float(make_eval_step(model_def)(state, batch)[0]["loss"]) == eval_loss


def test_trainable_subset_and_frozen_rest():
    tx = optax.adam(1e-2)
    model = BertForTokenClassification(BertConfig(**BERT), rngs=nnx.Rngs(0))
    only_head = nnx.All(nnx.Param, nnx.PathContains("classifier"))
    model_def, state = init_train_state(model, tx, trainable=only_head)
    frozen_before = [np.asarray(x) for x in jax.tree.leaves(state.frozen)]
    head_before = _params(state)
    state, _ = make_train_step(model_def, tx)(state, _bert_batch())
    assert len(head_before) == 2  # classifier kernel and bias
    assert all(not np.array_equal(a, b) for a, b in zip(_params(state), head_before))
    for a, b in zip(jax.tree.leaves(state.frozen), frozen_before):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="matches no variable"):
        init_train_state(model, tx, trainable=nnx.PathContains("nothing_here"))
