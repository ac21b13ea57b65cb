"""Rematerialised layers give the same loss and gradients, and really checkpoint."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxkernel.models.bert import BertConfig, BertForTokenClassification
from jaxkernel.models.gpt2 import Gpt2Config, Gpt2LMHeadModel
from jaxkernel.train.build import set_remat
from tiny_models import padded_batch


def loss_and_grads(model, ids, mask):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, rest):  # every variable enters the trace as an argument, as in the train step
        out = nnx.merge(graphdef, params, rest)(ids, mask)
        logits = out[0] if isinstance(out, tuple) else out
        return jnp.mean(jax.nn.logsumexp(logits, -1))

    # jitted: eagerly, every primitive compiles on its own (~15 s here, 10x that on a busy CI worker)
    return jax.jit(jax.value_and_grad(loss))(params, rest), jax.make_jaxpr(jax.grad(loss))(params, rest)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_remat_matches_and_checkpoints(family):
    if family == "bert":
        make = lambda: BertForTokenClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                                             num_attention_heads=2, intermediate_size=24,
                                                             num_labels=3), rngs=nnx.Rngs(0))
    else:
        make = lambda: Gpt2LMHeadModel(Gpt2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=32),
                                       rngs=nnx.Rngs(0))
    ids, mask = padded_batch(50, lengths=(7, 4))
    (loss, grads), plain_jaxpr = loss_and_grads(make(), ids, mask)
    model = make()
    set_remat(model, True)
    (loss_r, grads_r), remat_jaxpr = loss_and_grads(model, ids, mask)
    assert "remat" in str(remat_jaxpr) and "remat" not in str(plain_jaxpr)  # jax.checkpoint primitive
    np.testing.assert_allclose(float(loss_r), float(loss), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_r), jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
