"""jaxkernel's global-norm clipping: optax's result (bit-identical below the threshold, rounding above),
torch's ``clip_grad_norm_`` semantics, and an optimizer state checkpoints can exchange with optax's."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxkernel.train.clipping import clip_by_global_norm


def _grads(scale):
    rng = np.random.default_rng(0)
    return {"a": jnp.asarray(rng.standard_normal((7, 5)) * scale, jnp.float32),
            "b": {"c": jnp.asarray(rng.standard_normal(11) * scale, jnp.float32)}}


def test_below_the_threshold_updates_are_untouched_bit_for_bit():
    g = _grads(1e-3)
    assert float(optax.global_norm(g)) < 1.0
    ours, _ = clip_by_global_norm(1.0).update(g, optax.EmptyState())
    theirs, _ = optax.clip_by_global_norm(1.0).update(g, optax.EmptyState())
    for x, y, z in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), jax.tree.leaves(g)):
        np.testing.assert_array_equal(x, z)
        np.testing.assert_array_equal(y, z)


def test_above_the_threshold_matches_optax_and_torch():
    torch = pytest.importorskip("torch")
    g = _grads(10.0)
    ours, _ = jax.jit(clip_by_global_norm(2.0).update)(g, optax.EmptyState())
    theirs, _ = optax.clip_by_global_norm(2.0).update(g, optax.EmptyState())
    assert abs(float(optax.global_norm(ours)) - 2.0) < 1e-5
    for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(x, y, rtol=1e-6)
    tensors = [torch.tensor(np.asarray(x)) for x in jax.tree.leaves(g)]
    for t in tensors:
        t.grad = t.clone()
    torch.nn.utils.clip_grad_norm_(tensors, 2.0)
    for x, t in zip(jax.tree.leaves(ours), tensors):
        np.testing.assert_allclose(x, t.grad.numpy(), rtol=1e-5)


def test_zero_gradients_stay_zero_and_state_is_optax_compatible():
    g = jax.tree.map(jnp.zeros_like, _grads(1.0))
    ours, state = clip_by_global_norm(1.0).update(g, clip_by_global_norm(1.0).init(g))
    assert all(not np.any(np.isnan(x)) and not np.any(x) for x in jax.tree.leaves(ours))
    assert jax.tree.structure(state) == jax.tree.structure(optax.clip_by_global_norm(1.0).init(g))


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_a_non_positive_max_norm_is_refused(bad):
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        clip_by_global_norm(bad)
