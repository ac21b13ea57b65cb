"""Abstract models of real sizes have the known parameter counts and allocate nothing."""

import jax
import pytest
from flax import nnx

from jaxkernel.models.sizes import abstract_model, count_params


@pytest.mark.parametrize(
    "name, expected",
    [("bert-base-uncased", 110e6), ("bert-large-uncased", 335e6), ("gpt2", 124e6), ("gpt2-xl", 1.56e9)],
)
def test_known_parameter_counts(name, expected):
    model = abstract_model(name)
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert leaves and all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)
    assert abs(count_params(model) - expected) / expected < 0.01


def test_parameters_carry_logical_axes():
    model = abstract_model("gpt2", task="causal-lm")
    assert model.transformer.h[0].mlp.c_fc.kernel.out_sharding == ("embed", "mlp")
    assert model.transformer.wte.embedding.out_sharding == ("vocab", "embed")
    bert = abstract_model("bert-base-uncased", task="token-classification")
    assert bert.bert.encoder.layer[0].attention.self.query.kernel.out_sharding == ("embed", "heads")
    unnamed = [path for path, var in nnx.iter_graph(bert)
               if isinstance(var, nnx.Param) and getattr(var, "out_sharding", None) is None]
    assert not unnamed, f"parameters without logical axes: {unnamed}"


def test_unknown_size_and_task():
    with pytest.raises(ValueError, match="known"):
        abstract_model("gpt5")
    with pytest.raises(ValueError, match="causal-lm"):
        abstract_model("bert-base-uncased", task="causal-lm")
