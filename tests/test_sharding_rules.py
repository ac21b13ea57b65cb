"""Sharding rules, meshes, golden PartitionSpecs, per-device bytes and the planner (8 CPU devices)."""

import json
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxkernel.models.bert import BertConfig, BertForTokenClassification
from jaxkernel.models.gpt2 import Gpt2Config, Gpt2LMHeadModel
from jaxkernel.peft import LoraConfig, apply_lora, trainable_filter
from jaxkernel.sharding.mesh import MeshConfig, make_mesh, parse_mesh_shape
from jaxkernel.sharding.placement import create_sharded, shard_batch
from jaxkernel.sharding.plan import format_plan, parse_bytes, parse_device, plan_config, plan_model
from jaxkernel.sharding.rules import check_batch, check_model, get_rules
from jaxkernel.train.step import init_train_state

GOLDEN = Path(__file__).parent / "golden"

BERT_CFG = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=16, num_labels=5)
GPT2_CFG = Gpt2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4, n_positions=16, bos_token_id=1, eos_token_id=2)

# name -> (mesh shape (data, fsdp, tensor), preset)
MESHES = {
    "dp": ((8, 1, 1), "dp"),
    "fsdp": ((1, 8, 1), "fsdp"),
    "tp": ((2, 1, 4), "tp"),
    "fsdp_tp": ((1, 2, 4), "fsdp_tp"),
    "dp_fsdp_tp": ((2, 2, 2), "fsdp_tp"),
}


def build_bert(lora: bool = False):
    model = BertForTokenClassification(BERT_CFG, rngs=nnx.Rngs(0))
    return apply_lora(model, LoraConfig(r=4, alpha=8, target_modules=["query", "value"])) if lora else model


def build_gpt2(lora: bool = False):
    model = Gpt2LMHeadModel(GPT2_CFG, rngs=nnx.Rngs(0))
    return apply_lora(model, LoraConfig(r=4, alpha=8, target_modules=["c_attn", "c_fc"])) if lora else model


BUILDERS = {"bert": build_bert, "gpt2": build_gpt2}


def spec_table(model) -> dict[str, str]:
    """Dotted path -> str(PartitionSpec) of every placed parameter."""
    return {
        ".".join(map(str, path)): str(var.get_value().sharding.spec)
        for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }


# ---------------------------------------------------------------------------
# Rules


def test_presets_map_logical_axes():
    sizes = {"data": 1, "fsdp": 4, "tensor": 2}
    assert get_rules("dp").spec(("vocab", "embed"), (64, 32), sizes) == P()
    assert get_rules("fsdp").spec(("vocab", "embed"), (64, 32), sizes) == P(None, "fsdp")
    assert get_rules("tp").spec(("vocab", "embed"), (64, 32), sizes) == P("tensor")
    assert get_rules("fsdp_tp").spec(("vocab", "embed"), (64, 32), sizes) == P("tensor", "fsdp")
    # Megatron: column-parallel in, row-parallel out.
    assert get_rules("tp").spec(("embed", "mlp"), (32, 128), sizes) == P(None, "tensor")
    assert get_rules("tp").spec(("mlp", "embed"), (128, 32), sizes) == P("tensor")
    # LoRA rank and norms stay replicated.
    assert get_rules("fsdp_tp").spec(("embed", "lora_rank"), (32, 4), sizes) == P("fsdp")
    assert get_rules("fsdp_tp").spec(("lora_rank", "heads"), (4, 32), sizes) == P(None, "tensor")
    assert get_rules("fsdp_tp").spec(("norm",), (32,), sizes) == P()


def test_overrides_and_fallback_notes():
    sizes = {"data": 1, "fsdp": 8, "tensor": 1}
    rules = get_rules("fsdp", {"vocab": "fsdp", "embed": None})
    assert rules.spec(("vocab", "embed"), (64, 36), sizes) == P("fsdp")
    both = get_rules("dp", {"mlp": "fsdp+tensor"})
    assert both.spec(("embed", "mlp"), (32, 64), {"data": 1, "fsdp": 2, "tensor": 4}) == P(None, ("fsdp", "tensor"))
    notes = []
    assert get_rules("fsdp").spec(("vocab", "embed"), (97, 36), sizes, what="wte", notes=notes) == P()
    assert notes == ["wte dim 1 (embed=36) is not divisible by fsdp=8: replicated"]
    with pytest.raises(ValueError, match="unknown mesh axis; mesh axes are"):
        get_rules("fsdp", {"embed": "model"})
    with pytest.raises(ValueError, match="unknown sharding preset 'zero3'"):
        get_rules("zero3")


def test_bad_inputs_name_the_numbers():
    with pytest.raises(ValueError, match=r"mesh shape \(3, 2, 1\) needs 6 devices, found 8"):
        make_mesh(MeshConfig((3, 2, 1)))
    with pytest.raises(ValueError, match=r"mesh shape \(3, -1, 1\) cannot use 8 devices"):
        make_mesh(MeshConfig((3, -1, 1)))
    with pytest.raises(ValueError, match="more than one -1"):
        MeshConfig((-1, -1, 1))
    with pytest.raises(ValueError, match=r"batch size 6 is not divisible by the data-parallel mesh axes data\*fsdp = 2\*2 = 4"):
        check_batch(6, {"data": 2, "fsdp": 2, "tensor": 2})
    with pytest.raises(ValueError, match=r"microbatch size 4 \(8/2\) is not divisible .* = 8"):
        check_batch(8, {"data": 1, "fsdp": 8, "tensor": 1}, microbatches=2)
    mesh = make_mesh(MeshConfig((4, 1, 2)))
    with pytest.raises(ValueError, match="batch size 6 is not divisible"):
        shard_batch({"input_ids": np.zeros((6, 4), np.int32)}, mesh)
    three_heads = BertConfig(vocab_size=64, hidden_size=36, num_hidden_layers=1, num_attention_heads=3,
                             intermediate_size=64, max_position_embeddings=16)
    with pytest.raises(ValueError, match=r"3 attention heads are not divisible by the tensor mesh axis size 2.*\[1, 3\]"):
        check_model(three_heads, get_rules("tp"), mesh)
    with pytest.raises(ValueError, match="3 attention heads"):
        create_sharded(lambda: BertForTokenClassification(three_heads, rngs=nnx.Rngs(0)), mesh, "tp")
    check_model(three_heads, get_rules("fsdp"), mesh)  # no tensor parallelism: fine


def test_mesh_config():
    mesh = make_mesh(MeshConfig((2, -1, 2)))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    mesh = make_mesh(MeshConfig((4, 2), axes=("fsdp", "tensor")))
    assert dict(mesh.shape) == {"fsdp": 4, "tensor": 2, "data": 1}
    assert MeshConfig.for_preset("tp").resolve(8) == (1, 1, 8)
    assert parse_mesh_shape("2x2x2") == (2, 2, 2) and parse_mesh_shape("1,-1,2") == (1, -1, 2)


# ---------------------------------------------------------------------------
# Golden PartitionSpecs: every parameter lands where its preset promises


@pytest.mark.parametrize("name", sorted(MESHES))
def test_golden_partition_specs(name):
    shape, preset = MESHES[name]
    mesh = make_mesh(MeshConfig(shape))
    actual = {
        f"{model}{'_lora' if lora else ''}": spec_table(create_sharded(lambda: BUILDERS[model](lora), mesh, preset))
        for model in BUILDERS for lora in (False, True)
    }
    golden = json.loads((GOLDEN / f"sharding_{name}.json").read_text())
    assert golden["mesh"] == list(shape) and golden["preset"] == preset
    for key, table in actual.items():
        assert table == golden[key], f"{key} under {name}: specs differ from tests/golden/sharding_{name}.json"


def test_optimizer_state_follows_parameters():
    mesh = make_mesh(MeshConfig((1, 2, 4)))
    model = create_sharded(build_gpt2, mesh, "fsdp_tp")
    _, state = init_train_state(model, optax.adamw(1e-3), mesh=mesh, rules="fsdp_tp")
    mu = state.opt_state[0].mu
    for (path, p), (_, m) in zip(nnx.to_flat_state(state.params), nnx.to_flat_state(mu)):
        assert p.get_value().sharding == m.get_value().sharding, path


# ---------------------------------------------------------------------------
# Per-device bytes and the planner


def _device0_bytes(tree) -> int:
    device = jax.devices()[0]
    return sum(
        shard.data.nbytes
        for leaf in jax.tree.leaves(tree) if hasattr(leaf, "addressable_shards")
        for shard in leaf.addressable_shards if shard.device == device
    )


def _wide_gpt2():
    return Gpt2LMHeadModel(Gpt2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=8, n_positions=32,
                                      bos_token_id=1, eos_token_id=2), rngs=nnx.Rngs(0))


def test_fsdp_shrinks_per_device_bytes():
    dp = create_sharded(_wide_gpt2, make_mesh(MeshConfig((8, 1, 1))), "dp")
    fsdp = create_sharded(_wide_gpt2, make_mesh(MeshConfig((1, 8, 1))), "fsdp")
    tp = create_sharded(_wide_gpt2, make_mesh(MeshConfig((1, 1, 8))), "tp")
    full = _device0_bytes(nnx.state(dp, nnx.Param))
    assert full == sum(x.nbytes for x in jax.tree.leaves(nnx.state(dp, nnx.Param)))
    ratio_fsdp = _device0_bytes(nnx.state(fsdp, nnx.Param)) / full
    ratio_tp = _device0_bytes(nnx.state(tp, nnx.Param)) / full
    assert 0.125 <= ratio_fsdp < 0.14, ratio_fsdp  # only LayerNorms stay whole
    assert 0.125 <= ratio_tp < 0.25, ratio_tp  # position table, LayerNorms, output biases stay whole


@pytest.mark.parametrize("name,lora", [("fsdp", False), ("fsdp_tp", False), ("fsdp_tp", True), ("dp_fsdp_tp", False)])
def test_planner_bytes_match_placed_arrays(name, lora):
    shape, preset = MESHES[name]
    mesh = make_mesh(MeshConfig(shape))
    build = lambda: build_gpt2(lora)  # noqa: E731
    model = create_sharded(build, mesh, preset)
    tx = optax.adamw(1e-3)
    trainable = trainable_filter(model)
    _, state = init_train_state(model, tx, trainable=trainable, mesh=mesh, rules=preset)
    plan = plan_model(nnx.eval_shape(build), dict(mesh.shape), preset, batch_size=8, seq_len=16,
                      trainable=trainable, optimizer="adamw")
    actual_params = _device0_bytes(state.params) + _device0_bytes(state.frozen)
    actual_opt = _device0_bytes(state.opt_state)
    assert abs(plan.param_bytes - actual_params) <= 0.05 * actual_params
    assert abs(plan.optimizer_bytes - actual_opt) <= 0.05 * actual_opt
    assert plan.trainable_bytes == _device0_bytes(state.params)


def test_planner_report_and_warnings():
    gpt2_xl = Gpt2Config(n_embd=1600, n_layer=48, n_head=25)
    plan = plan_config(gpt2_xl, "causal-lm", mesh=(8, 1, 1), preset="dp", batch_size=8, seq_len=1024,
                       device_memory=parse_bytes("16GiB"))
    assert 1.55e9 < plan.num_params < 1.57e9
    assert any("does not fit" in w for w in plan.warnings)
    plan = plan_config(gpt2_xl, "causal-lm", mesh=(1, 8, 1), preset="fsdp", batch_size=8, seq_len=512,
                       device_memory=parse_bytes("16GiB"))
    assert not plan.warnings, plan.warnings
    assert plan.param_bytes == pytest.approx(plan.num_params * 4 / 8, rel=0.01)
    remat = plan_config(gpt2_xl, "causal-lm", mesh=(1, 8, 1), preset="fsdp", batch_size=8, seq_len=512, remat=True)
    assert remat.activation_bytes < plan.activation_bytes / 10
    report = format_plan(plan)
    assert "transformer.h.*.attn.c_attn.kernel" in report and "P('fsdp')" in report
    plan = plan_config(gpt2_xl, "causal-lm", mesh=(1, 2, 4), preset="fsdp_tp", batch_size=8, seq_len=1024)
    assert any("25 attention heads are not divisible by the tensor mesh axis size 4" in w for w in plan.warnings)
    plan = plan_config(GPT2_CFG, "causal-lm", mesh=(1, 2, 4), preset="fsdp", batch_size=4, seq_len=16)
    assert any("mesh axis 'tensor' has 4 devices but preset 'fsdp' does not use it" in w for w in plan.warnings)
    assert parse_bytes("80GB") == 80 * 10**9 and parse_bytes("16GiB") == 16 * 2**30
    assert parse_device("v4-32") == (16, 32 * 2**30) and parse_device("v5e-8") == (8, 16 * 2**30)


def test_plan_cli(capsys):
    from jaxkernel.sharding.plan import _run_plan, add_plan
    import argparse

    parser = argparse.ArgumentParser()
    add_plan(parser.add_subparsers())
    args = parser.parse_args(["plan", "bert-base", "--device", "v5e-8", "--mesh", "1,-1,1", "--batch-size", "32",
                              "--seq-len", "128", "--num-labels", "9", "--rule", "vocab=none"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "bert-base (token-classification), estimated" in out
    assert "on 8 devices (data=1 x fsdp=8 x tensor=1)" in out
