"""Hugging Face weights load straight into their shards; batches become global arrays."""

import jax
import numpy as np
import transformers
from flax import nnx

from jaxkernel.hf.pretrained import from_pretrained
from jaxkernel.sharding.mesh import MeshConfig, make_mesh
from jaxkernel.sharding.placement import from_pretrained_sharded, shard_batch
from tiny_models import _randomise


def _values(model):
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        value = var.get_value()
        if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            value = jax.random.key_data(value)
        out[".".join(map(str, path))] = (np.asarray(value), getattr(value, "sharding", None))
    return out


def test_hf_weights_load_into_shards(tmp_path):
    config = transformers.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=4)
    _randomise(transformers.BertForTokenClassification(config), 0).save_pretrained(tmp_path)
    mesh = make_mesh(MeshConfig((1, 2, 4)))
    expected = _values(from_pretrained(tmp_path))
    sharded = from_pretrained_sharded(tmp_path, mesh, "fsdp_tp")
    actual = _values(sharded)
    assert actual.keys() == expected.keys()
    for path, (value, sharding) in actual.items():
        np.testing.assert_array_equal(value, expected[path][0], err_msg=path)
    kernel = sharded.bert.encoder.layer[0].attention.self.query.kernel.get_value()
    assert kernel.sharding.spec == jax.P("fsdp", "tensor")
    assert {s.data.shape for s in kernel.addressable_shards} == {(16, 8)}
    # The pooler, absent from a token-classification checkpoint, is initialised in its shards,
    # equal to the unsharded initialisation (up to an ulp: jit fuses the normal sampler differently).
    seq = from_pretrained_sharded(tmp_path, mesh, "fsdp_tp", task="sequence-classification")
    reference = from_pretrained(tmp_path, task="sequence-classification")
    pooler = seq.bert.pooler.dense.kernel.get_value()
    np.testing.assert_allclose(pooler, reference.bert.pooler.dense.kernel.get_value(), rtol=1e-6)
    assert pooler.sharding.spec == jax.P("fsdp")


def test_shard_batch_splits_rows_over_data_axes():
    mesh = make_mesh(MeshConfig((2, 2, 2)))
    ids = np.arange(8 * 3).reshape(8, 3).astype(np.int32)
    batch = shard_batch({"input_ids": ids, "labels": ids[:, 0]}, mesh)
    np.testing.assert_array_equal(batch["input_ids"], ids)
    assert batch["input_ids"].sharding.spec == jax.P(("data", "fsdp"), None)
    assert {s.data.shape for s in batch["input_ids"].addressable_shards} == {(2, 3)}
    assert batch["labels"].sharding.spec == jax.P(("data", "fsdp"))
