"""Dropout masks from packed 16-bit thresholds: rate, expectation, determinism, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxkernel.models.dropout import Dropout, dropout, dropout_mask, random_uint16


def test_random_uint16_is_uniform_and_uses_every_word():
    bits = np.asarray(random_uint16(jax.random.key(0), (64, 1001)))
    assert bits.dtype == np.uint16 and bits.shape == (64, 1001)
    counts = np.bincount(bits.ravel() >> 12, minlength=16)  # 16 bins of the high nibble
    expected = bits.size / 16
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)
    # Neighbours come from the same hash: they must still be uncorrelated.
    x = bits.astype(np.float64).ravel()
    assert abs(np.corrcoef(x[:-1], x[1:])[0, 1]) < 0.01


def test_mask_rate_and_expectation():
    keep, scale = dropout_mask(jax.random.key(1), 0.1, (256, 4096))
    keep = np.asarray(keep)
    assert abs(scale - 65536 / (65536 - 6554)) < 1e-12
    assert abs(keep.mean() - (1 - 6554 / 65536)) < 4 * np.sqrt(0.09 / keep.size)


def test_rates_at_the_ends():
    keep, scale = dropout_mask(jax.random.key(2), 0.999999, (8, 8))  # rounds to 65536 levels: still finite
    assert scale == 65536.0
    keep, scale = dropout_mask(jax.random.key(2), 0.0, (8, 8))
    assert bool(np.asarray(keep).all()) and scale == 1.0


def test_mask_is_a_function_of_key_and_shape():
    a, _ = dropout_mask(jax.random.key(3), 0.3, (5, 7, 9))
    b = jax.jit(lambda k: dropout_mask(k, 0.3, (5, 7, 9))[0])(jax.random.key(3))
    c, _ = dropout_mask(jax.random.key(4), 0.3, (5, 7, 9))
    np.testing.assert_array_equal(a, b)
    assert (np.asarray(a) != np.asarray(c)).any()
    # Raw key data gives the same mask as the typed key.
    d, _ = dropout_mask(jax.random.key_data(jax.random.key(3)), 0.3, (5, 7, 9))
    np.testing.assert_array_equal(a, d)


def test_module_train_eval_and_broadcast():
    layer = dropout(0.25, nnx.Rngs(dropout=0))
    x = jnp.ones((4, 6, 8))
    np.testing.assert_array_equal(layer(x), x)  # built in eval mode
    layer.deterministic = False
    y = np.asarray(layer(x))
    kept = y != 0
    np.testing.assert_allclose(y[kept], 65536 / (65536 - 16384))
    assert 0 < kept.mean() < 1
    assert (np.asarray(layer(x)) != y).any()  # the stream advances
    shared = Dropout(0.5, broadcast_dims=(1,), rngs=nnx.Rngs(dropout=0))
    z = np.asarray(shared(x, deterministic=False))
    assert (z == z[:, :1]).all()  # one mask shared along axis 1
    assert isinstance(layer, nnx.Dropout)
    rbg = np.asarray(random_uint16(jax.random.key(0, impl="rbg"), (4, 5)))  # other generators draw per element
    assert rbg.shape == (4, 5) and rbg.dtype == np.uint16


@pytest.mark.parametrize("spec", [("data", None, None), (None, None, "model"), ("data", None, "model")])
def test_sharded_mask_equals_single_device(spec):
    assert len(jax.devices()) == 8  # conftest simulates 8 CPU devices
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
    x = jax.device_put(jnp.arange(8 * 10 * 6, dtype=jnp.float32).reshape(8, 10, 6), sharding)

    def apply(key, x):
        keep, scale = dropout_mask(key, 0.2, x.shape)
        return jnp.where(keep, x * scale, 0)

    sharded = jax.jit(apply, out_shardings=sharding)(jax.random.key(9), x)
    single = apply(jax.random.key(9), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(sharded), np.asarray(single))
