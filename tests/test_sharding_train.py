"""Sharded training equals single-device training, for every preset (8 simulated CPU devices).

BERT token classification and GPT-2 causal LM, full fine-tune and LoRA: the
models are born sharded, the batch is placed as global arrays, and after one
and after three AdamW steps (lr 1e-3, dropout on) the loss and the gradient norm
match an unsharded run at rtol 1e-5 and every updated parameter at rtol 1e-5,
atol 1e-6 (a thousandth of the learning rate).

Why the atol: Adam's first update is ``lr * g / (|g| + eps)``. Sharding changes
the order of float32 reductions, so a gradient differs by ~1e-10 absolute; for
the few elements whose gradient is itself near ``eps`` (or exactly zero in
theory: a softmax does not see the key bias) that noise is magnified up to
``lr / eps`` times. ``eps`` is 1e-6 here so the magnified noise stays below
1e-6; a real sharding bug moves parameters by about ``lr`` and fails loudly.
"""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from jaxkernel.peft import LoraConfig, apply_lora

from test_sharding_rules import BUILDERS, MESHES
from jaxkernel.models.registry import family_for
from jaxkernel.peft import trainable_filter
from jaxkernel.sharding.mesh import MeshConfig, make_mesh
from jaxkernel.sharding.placement import create_sharded, shard_batch
from jaxkernel.train.step import init_train_state, make_train_step

STEPS = (1, 3)


def _tx():
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, eps=1e-6))


def _batch(model: str) -> dict:
    rng = np.random.RandomState(1)
    ids = rng.randint(3, 64, (8, 12)).astype(np.int32)
    mask = np.ones((8, 12), np.int32)
    mask[2, 7:] = 0
    mask[5, 4:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if model == "bert":
        batch["token_type_ids"] = (np.arange(12) >= 6).astype(np.int32)[None].repeat(8, 0)
    if model in ("bert", "roberta"):
        batch["labels"] = np.where(mask == 1, rng.randint(0, 5, (8, 12)), -100).astype(np.int32)
    return batch


# Llama family: grouped-query attention with 2 key/value heads, fewer than tp's 4 tensor
# shards: k_proj/v_proj are column-split like q_proj, so a shard holds part of a kv head
# and XLA gathers what attention needs (exact, one extra reshuffle per layer).
LLAMA_CFG = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=32, bos_token_id=1, eos_token_id=2)


def build_llama(lora: bool = False):
    model = family_for("llama", "test").build("causal-lm", family_for("llama", "test").config(**LLAMA_CFG))
    return apply_lora(model, LoraConfig(r=4, alpha=8)) if lora else model  # PEFT defaults: q_proj, v_proj


def build_roberta(lora: bool = False):
    """RoBERTa: BERT's encoder and axes, its own positions and token-classification head."""
    family = family_for("roberta", "test")
    config = family.config(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=20, num_labels=5)
    model = family.build("token-classification", config)
    return apply_lora(model, LoraConfig(r=4, alpha=8)) if lora else model


TRAIN_BUILDERS = {**BUILDERS, "llama": build_llama, "roberta": build_roberta}


def _run(model: str, lora: bool, mesh_name: str | None):
    """Losses and host copies of the trainable parameters after each step in STEPS."""
    build = lambda: TRAIN_BUILDERS[model](lora)  # noqa: E731
    tx = _tx()
    batch = _batch(model)
    if mesh_name is None:
        built, mesh, preset = build(), None, None
    else:
        shape, preset = MESHES[mesh_name]
        mesh = make_mesh(MeshConfig(shape))
        built = create_sharded(build, mesh, preset)
        batch = shard_batch(batch, mesh)
    model_def, state = init_train_state(built, tx, trainable=trainable_filter(built), seed=3, mesh=mesh, rules=preset)
    initial = jax.device_get(state.params)
    step = make_train_step(model_def, tx)
    out = {}
    for i in range(1, max(STEPS) + 1):
        state, metrics = step(state, batch)
        if i in STEPS:
            out[i] = (float(metrics["loss"]), float(metrics["grad_norm"]), jax.device_get(state.params))
    if mesh is not None:
        for var in jax.tree.leaves(state.params, is_leaf=lambda x: isinstance(x, nnx.Variable)):
            assert var.get_value().sharding.mesh == mesh
    return initial, out


_REFERENCE: dict = {}


def _reference(model, lora):
    if (model, lora) not in _REFERENCE:
        _REFERENCE[model, lora] = _run(model, lora, None)
    return _REFERENCE[model, lora]


def _assert_params_close(actual, expected, what):
    flat_a = nnx.to_flat_state(actual)
    flat_e = dict(nnx.to_flat_state(expected))
    assert len(flat_a) == len(flat_e)
    for path, var in flat_a:
        np.testing.assert_allclose(
            np.asarray(var.get_value()), np.asarray(flat_e[path].get_value()), rtol=1e-5, atol=1e-6,
            err_msg=f"{what}: {'.'.join(map(str, path))}",
        )


@pytest.mark.slow
# Every preset for BERT and GPT-2, full and LoRA; Llama (GQA) in full, so that every weight,
# k/v with fewer heads than tensor shards included, is sharded and updated; RoBERTa (BERT's
# axes, its own positions and head) with LoRA. Chosen to keep the suite's time in bounds.
@pytest.mark.parametrize("model, lora", [("bert", False), ("bert", True), ("gpt2", False), ("gpt2", True),
                                         ("llama", False), ("roberta", True)],
                         ids=["bert-full", "bert-lora", "gpt2-full", "gpt2-lora", "llama-full", "roberta-lora"])
@pytest.mark.parametrize("mesh_name", sorted(MESHES))
def test_sharded_steps_equal_single_device(mesh_name, model, lora):
    ref_initial, reference = _reference(model, lora)
    initial, sharded = _run(model, lora, mesh_name)
    _assert_params_close(initial, ref_initial, f"{mesh_name} initial")  # born sharded == built whole
    for n in STEPS:
        ref_loss, ref_grad_norm, ref_params = reference[n]
        loss, grad_norm, params = sharded[n]
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, err_msg=f"{mesh_name} loss at step {n}")
        np.testing.assert_allclose(grad_norm, ref_grad_norm, rtol=1e-5, err_msg=f"{mesh_name} grad norm at step {n}")
        _assert_params_close(params, ref_params, f"{mesh_name} after {n} step(s)")


@pytest.mark.slow
def test_int8_base_with_lora_under_fsdp_tp():
    """Frozen int8 weights and their scales shard by the same logical axes; training matches one device."""
    from jaxkernel.models.gpt2 import Gpt2LMHeadModel
    from jaxkernel.peft import LoraConfig, apply_lora
    from jaxkernel.quant.transform import quantize_model
    from test_sharding_rules import GPT2_CFG

    def build():
        model = quantize_model(Gpt2LMHeadModel(GPT2_CFG, rngs=nnx.Rngs(0)))
        return apply_lora(model, LoraConfig(r=4, alpha=8, target_modules=["c_attn"]))

    batch, tx = _batch("gpt2"), _tx()
    results = []
    for mesh in (None, make_mesh(MeshConfig((1, 2, 4)))):
        model = build() if mesh is None else create_sharded(build, mesh, "fsdp_tp")
        model_def, state = init_train_state(model, tx, trainable=trainable_filter(model), mesh=mesh, rules="fsdp_tp")
        step = make_train_step(model_def, tx)
        for _ in range(2):
            state, metrics = step(state, batch if mesh is None else shard_batch(batch, mesh))
        results.append((float(metrics["loss"]), jax.device_get(state.params)))
        if mesh is not None:
            kernel = state.frozen["transformer"]["h"][0]["mlp"]["c_fc"]["kernel"].get_value()
            assert kernel.dtype == np.int8 and kernel.sharding.spec == jax.P("fsdp", "tensor")
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5)
    _assert_params_close(results[1][1], results[0][1], "int8 + LoRA")
