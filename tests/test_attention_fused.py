"""``attention()`` runs through ``jax.nn.dot_product_attention`` and equals the explicit reference.

The fused path (cuDNN on NVIDIA GPUs, XLA here) is what every eval, generation and
dropout-free training step uses; these checks pin it to the einsum-softmax-einsum
reference for the masks the models build: padding, causal, sliding window, prefix
keys, grouped-query heads and a partly filled KV cache, in values and gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxkernel.models import attention as attn
from jaxkernel.models.attention import attention, causal_mask, padding_mask, reference_attention


def _qkv(b=2, t=5, s=5, n=4, kv=4, h=8, seed=0, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (b, t, n, h), dtype)
    k = jax.random.normal(keys[1], (b, s, kv, h), dtype)
    v = jax.random.normal(keys[2], (b, s, kv, h), dtype)
    return q, k, v


def _padding(lengths, s):
    return padding_mask(jnp.asarray(np.arange(s)[None, :] < np.asarray(lengths)[:, None], jnp.int32))


def _both(q, k, v, mask, prefix_kv=None):
    fused = attention(q, k, v, mask, prefix_kv=prefix_kv)
    if prefix_kv is not None:  # the reference takes prefix keys already prepended and visible
        pk, pv = prefix_kv
        k, v = jnp.concatenate([pk, k], 1), jnp.concatenate([pv, v], 1)
        if mask is not None:
            mask = jnp.concatenate([jnp.ones(mask.shape[:-1] + (pk.shape[1],), bool), mask], -1)
    return fused, reference_attention(q, k, v, mask)


CASES = {
    "no-mask": lambda q: None,
    "padding": lambda q: _padding([5, 3], 5),
    "causal": lambda q: causal_mask(jnp.arange(5), jnp.arange(5)),
    "causal+padding": lambda q: causal_mask(jnp.arange(5), jnp.arange(5)) & _padding([5, 2], 5),
    "window-2": lambda q: causal_mask(jnp.arange(5), jnp.arange(5), window=2),
    "left-pad-all-masked-row": lambda q: causal_mask(jnp.arange(5), jnp.arange(5))
    & jnp.asarray([[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]], bool)[:, None, None, :],
}


@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa-2", "mqa"])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_equals_reference(case, kv_heads):
    q, k, v = _qkv(kv=kv_heads)
    fused, ref = _both(q, k, v, CASES[case](q))
    np.testing.assert_allclose(fused, ref, atol=2e-6, rtol=0)


def test_prefix_keys_are_visible_to_every_query():
    q, k, v = _qkv(kv=2)
    pk, pv = _qkv(b=2, s=3, kv=2, seed=1)[1:]
    mask = causal_mask(jnp.arange(5), jnp.arange(5)) & _padding([5, 3], 5)
    fused, ref = _both(q, k, v, mask, prefix_kv=(pk, pv))
    np.testing.assert_allclose(fused, ref, atol=2e-6, rtol=0)


def test_one_decoding_step_against_a_partly_filled_cache():
    """T=1 query at slot 6 of an 8-slot cache whose first two slots are left padding."""
    q = _qkv(t=1, kv=2)[0]
    k, v = _qkv(s=8, kv=2, seed=2)[1:]
    valid = jnp.asarray([[1, 1, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 1, 0]], bool)
    mask = causal_mask(jnp.asarray([6]), jnp.arange(8)) & valid[:, None, None, :]
    fused, ref = _both(q, k, v, mask)
    np.testing.assert_allclose(fused, ref, atol=2e-6, rtol=0)


def test_gradients_match():
    q, k, v = _qkv(kv=2)
    mask = causal_mask(jnp.arange(5), jnp.arange(5)) & _padding([5, 3], 5)
    fused = jax.grad(lambda *a: jnp.sum(jnp.sin(attention(*a, mask))), argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(lambda *a: jnp.sum(jnp.sin(reference_attention(*a, mask))), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(fused, ref):
        np.testing.assert_allclose(a, b, atol=5e-6, rtol=0)


def test_bfloat16_inputs_stay_close():
    q, k, v = _qkv(kv=2, dtype=jnp.bfloat16)
    mask = _padding([5, 3], 5)
    fused, ref = _both(q, k, v, mask)
    assert fused.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(fused), np.float32(ref), atol=2e-2, rtol=0)


def test_active_dropout_takes_the_reference_path_and_eval_dropout_does_not(monkeypatch):
    calls = []
    real = jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q, k, v = _qkv()
    drop = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    drop.deterministic = True
    attention(q, k, v, None, dropout=drop)
    assert calls == [1]
    drop.deterministic = False
    out = attention(q, k, v, None, dropout=drop)
    assert calls == [1], "dropout on the probabilities must run the reference path"
    assert not np.allclose(out, reference_attention(q, k, v, None)), "the dropout did not apply"


def test_implementation_switch_and_bad_name(monkeypatch):
    monkeypatch.setattr(attn, "_implementation", "auto")
    with pytest.raises(ValueError, match="unknown"):
        attn.set_attention_implementation("flash")
    attn.set_attention_implementation("reference")
    assert attn._fused_backend(jnp.float32) is None
    attn.set_attention_implementation("auto")
    assert attn._fused_backend(jnp.bfloat16) == ("cudnn" if jax.default_backend() == "gpu" else "xla")
