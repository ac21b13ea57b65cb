"""int8 quantization: numerics, modules, model surgery, memory, persistence, export, CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

import jaxkernel
from jaxkernel.cli import main as cli_main
from jaxkernel.models.layers import Linear
from jaxkernel.quant.int8 import Int8Embed, Int8Linear, Int8Weight, QuantScale, dequantize, quantize_int8
from jaxkernel.quant.io import WEIGHTS_NAME, load_quantized, save_quantized
from jaxkernel.quant.memory import param_bytes
from jaxkernel.quant.transform import dequantize_model, quantize_model, quantized_paths

from tiny_models import hf_bert, padded_batch

BERT = dict(vocab_size=97, hidden_size=36, num_hidden_layers=2, num_attention_heads=3, intermediate_size=50)
GPT2 = dict(vocab_size=97, n_embd=36, n_layer=2, n_head=3, n_positions=64)


def tiny_bert(task_cls=jaxkernel.BertForSequenceClassification, **kw):
    return task_cls(jaxkernel.BertConfig(**{**BERT, **kw}), rngs=nnx.Rngs(0))


def tiny_gpt2(**kw):
    return jaxkernel.Gpt2LMHeadModel(jaxkernel.Gpt2Config(**{**GPT2, **kw}), rngs=nnx.Rngs(0))


def ids_batch(vocab=97, shape=(2, 11), seed=0):
    return jax.random.randint(jax.random.key(seed), shape, 1, vocab)


# ---------------------------------------------------------------- pure functions


@pytest.mark.parametrize("shape,axis,group", [((64, 48), 0, None), ((48, 64), 0, 16), ((3, 5, 40), -1, None),
                                              ((3, 5, 40), -1, 8), ((33, 7), (0, 1), None)])
def test_round_trip_error_is_at_most_half_a_step(shape, axis, group):
    w = jax.random.normal(jax.random.key(1), shape) * jnp.exp(jax.random.normal(jax.random.key(2), shape))
    q, scale = quantize_int8(w, axis, group)
    assert q.dtype == jnp.int8 and q.shape == w.shape and scale.dtype == jnp.float32
    assert int(q.min()) >= -127 and int(q.max()) <= 127  # never -128
    step = np.asarray(dequantize(jnp.ones_like(q), scale))  # scale spread over w's shape
    err = np.abs(np.asarray(w) - np.asarray(dequantize(q, scale)))
    assert np.all(err <= step / 2 * (1 + 1e-6))
    # the absmax of every channel / group lands on +-127
    assert int(jnp.abs(q).max()) == 127


def test_scale_is_per_output_channel_by_default():
    q, scale = quantize_int8(jnp.ones((10, 6)))
    assert scale.shape == (1, 6)
    q, scale = quantize_int8(jnp.ones((12, 6)), group_size=4)
    assert scale.shape == (3, 6)


def test_weights_on_the_grid_are_exact():
    rng = np.random.RandomState(0)
    q0 = rng.randint(-127, 128, (40, 9)).astype(np.int8)
    q0[rng.randint(0, 40, 9), np.arange(9)] = rng.choice([-127, 127], 9)  # each channel reaches the absmax
    pow2 = (2.0 ** rng.randint(-12, 3, (1, 9))).astype(np.float32)
    w = q0.astype(np.float32) * pow2
    q, scale = quantize_int8(jnp.asarray(w))
    np.testing.assert_array_equal(np.asarray(q), q0)
    np.testing.assert_array_equal(np.asarray(scale), pow2)
    np.testing.assert_array_equal(np.asarray(dequantize(q, scale)), w)  # bit-exact
    # arbitrary (non power-of-two) scales: the codes still come back exactly
    odd = (rng.rand(1, 9) * 0.3 + 0.01).astype(np.float32)
    q, _ = quantize_int8(jnp.asarray(q0.astype(np.float32) * odd))
    np.testing.assert_array_equal(np.asarray(q), q0)


def test_zero_channels_do_not_divide_by_zero():
    w = jnp.zeros((8, 4)).at[:, 1].set(jnp.linspace(-1, 1, 8))
    q, scale = quantize_int8(w)
    assert np.all(np.isfinite(np.asarray(scale))) and float(scale[0, 0]) == 0.0
    np.testing.assert_array_equal(np.asarray(q[:, [0, 2, 3]]), 0)
    deq = np.asarray(dequantize(q, scale))
    assert np.all(np.isfinite(deq)) and np.all(deq[:, [0, 2, 3]] == 0)
    q, scale = quantize_int8(jnp.zeros((4, 4)), group_size=2)
    assert np.all(np.asarray(dequantize(q, scale)) == 0)


def test_bfloat16_input_is_accepted():
    w = jax.random.normal(jax.random.key(0), (16, 8), jnp.bfloat16)
    q, scale = quantize_int8(w)
    assert q.dtype == jnp.int8 and scale.dtype == jnp.float32


def test_bad_inputs_are_refused():
    with pytest.raises(TypeError, match="floating-point"):
        quantize_int8(jnp.ones((4, 4), jnp.int32))
    with pytest.raises(ValueError, match="does not divide"):
        quantize_int8(jnp.ones((10, 4)), group_size=4)
    with pytest.raises(ValueError, match="single contracting axis"):
        quantize_int8(jnp.ones((8, 4)), axis=(0, 1), group_size=2)


# ---------------------------------------------------------------- modules


def float_linear(n_in=48, n_out=20, seed=0, dtype=None):
    layer = Linear(n_in, n_out, axes=("embed", "mlp"), stddev=0.5, dtype=dtype, rngs=nnx.Rngs(seed))
    layer.bias[...] = jax.random.normal(jax.random.key(seed + 1), (n_out,))
    return layer


@pytest.mark.parametrize("group", [None, 12])
def test_int8_linear_weight_only_is_x_times_dequantized_kernel(group):
    linear = float_linear()
    layer = Int8Linear.from_linear(linear, group_size=group)
    assert (layer.in_features, layer.out_features) == (48, 20)
    assert isinstance(layer.kernel, Int8Weight) and isinstance(layer.scale, QuantScale)
    assert layer.kernel.get_metadata()["out_sharding"] == ("embed", "mlp")
    assert layer.scale.get_metadata()["out_sharding"] == (None, "mlp")
    x = jax.random.normal(jax.random.key(3), (2, 5, 48))
    expected = x @ dequantize(layer.kernel[...], layer.scale[...]) + linear.bias[...]
    np.testing.assert_allclose(np.asarray(jax.jit(lambda x: layer(x))(x)), np.asarray(expected), atol=1e-5)
    ref = np.asarray(linear(x))
    assert np.abs(np.asarray(layer(x)) - ref).max() < 0.02 * np.abs(ref).max()


@pytest.mark.parametrize("group", [None, 12])
def test_w8a8_matmul_runs_int8_with_int32_accumulation(group):
    layer = Int8Linear.from_linear(float_linear(), mode="w8a8", group_size=group)
    x = jax.random.normal(jax.random.key(3), (2, 5, 48))
    jaxpr = str(jax.make_jaxpr(lambda x: layer(x))(x))
    assert "preferred_element_type=int32" in jaxpr and "i8[" in jaxpr
    weight_only = Int8Linear.from_linear(float_linear(), group_size=group)
    ref = np.asarray(weight_only(x))
    out = np.asarray(layer(x))
    assert np.abs(out - ref).max() < 0.02 * np.abs(ref).max()


def test_w8a8_backward_is_straight_through():
    layer = Int8Linear.from_linear(float_linear(), mode="w8a8")
    reference = Int8Linear.from_linear(float_linear())  # weight-only: the exact dequantized product
    x = jax.random.normal(jax.random.key(3), (4, 48))
    g = jax.grad(lambda x: layer(x).sum())(x)
    g_ref = jax.grad(lambda x: reference(x).sum())(x)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), atol=1e-5)


def test_bf16_compute_dtype_is_kept():
    layer = Int8Linear.from_linear(float_linear(dtype=jnp.bfloat16))
    assert layer(jnp.ones((2, 48))).dtype == jnp.bfloat16


def test_int8_embed_lookup_and_attend():
    model = tiny_gpt2()
    embed = model.transformer.wte
    q8 = Int8Embed.from_embed(embed)
    ids = ids_batch()
    np.testing.assert_allclose(np.asarray(q8(ids)), np.asarray(embed(ids)), atol=5e-4)
    x = jax.random.normal(jax.random.key(0), (2, 36))
    np.testing.assert_allclose(np.asarray(q8.attend(x)), np.asarray(embed.attend(x)), atol=5e-3)


def test_a_wrapper_calling_base_layer_trains_through_int8():
    """What LoRA does: y = base_layer(x) + x @ A @ B; only the wrapper's Params get gradients."""

    class Wrapper(nnx.Module):
        def __init__(self, base):
            self.base_layer = base
            self.a = nnx.Param(jnp.full((base.in_features, 2), 0.1))
            self.b = nnx.Param(jnp.full((2, base.out_features), 0.1))

        def __call__(self, x):
            return self.base_layer(x) + x @ self.a[...] @ self.b[...]

    for mode in ("weight_only", "w8a8"):
        wrapper = Wrapper(Int8Linear.from_linear(float_linear(), mode=mode))
        wrapper.base_layer.bias = None
        x = jax.random.normal(jax.random.key(0), (3, 48))
        grads = nnx.grad(lambda m: jnp.square(m(x)).mean())(wrapper)
        names = {".".join(map(str, path)) for path, _ in nnx.to_flat_state(grads)}
        assert names == {"a", "b"}, names


# ---------------------------------------------------------------- model surgery


def test_default_targets_are_the_block_linears():
    model = quantize_model(tiny_bert())
    paths = quantized_paths(model)
    assert len(paths) == 2 * 6 and all(p.startswith("bert.encoder.layer.") for p in paths)
    assert isinstance(model.classifier, Linear) and isinstance(model.bert.pooler.dense, Linear)
    assert isinstance(model.bert.encoder.layer[0].attention.self.query, Int8Linear)
    # LayerNorms, biases and embeddings stay float Params; int8 state is not a Param
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert all(jnp.issubdtype(v.dtype, jnp.floating) for _, v in params)
    assert any(p[-1] == "bias" and "query" in p for p, _ in params)
    gpt = quantize_model(tiny_gpt2())
    assert quantized_paths(gpt) == [f"transformer.h.{i}.{m}" for i in range(2)
                                    for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]


@pytest.mark.parametrize("mode", ["weight_only", "w8a8"])
def test_quantized_models_stay_close_to_float(mode):
    ids = ids_batch()
    bert = tiny_bert()
    ref = np.asarray(bert(ids))
    out = np.asarray(quantize_model(bert, mode=mode)(ids))
    assert np.abs(out - ref).max() < 0.02 * max(1.0, np.abs(ref).max())
    gpt = tiny_gpt2()
    ref, _ = gpt(ids)
    out, _ = jax.jit(lambda m, ids: m(ids))(quantize_model(gpt, mode=mode), ids)
    assert np.abs(np.asarray(out) - np.asarray(ref)).max() < 0.02 * max(1.0, float(jnp.abs(ref).max()))


def test_targets_skip_heads_and_embeddings():
    model = quantize_model(tiny_bert(), targets=["query", "value"], skip=["layer.1.attention.self.value"])
    assert quantized_paths(model) == [
        "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value",
        "bert.encoder.layer.1.attention.self.query",
    ]
    with pytest.raises(ValueError, match="include_heads=True"):
        quantize_model(tiny_bert(), targets=["classifier"])
    model = quantize_model(tiny_bert(), targets=["classifier"], include_heads=True)
    assert quantized_paths(model) == ["classifier"]
    gpt = quantize_model(tiny_gpt2(), targets=r".*")  # asked: tied wte/wpe embeddings too
    assert isinstance(gpt.transformer.wte, Int8Embed) and len(quantized_paths(gpt)) == 10
    logits, _ = gpt(ids_batch())
    assert logits.shape == (2, 11, 97) and logits.dtype == jnp.float32


def test_bad_model_inputs_give_clear_errors():
    model = quantize_model(tiny_bert())
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(model)
    with pytest.raises(ValueError, match="'qurey' matches no Linear/Embed module.*closest: query"):
        quantize_model(tiny_bert(), targets=["qurey"])
    with pytest.raises(ValueError, match="skip 'nothing_here'"):
        quantize_model(tiny_bert(), skip=["nothing_here"])
    with pytest.raises(ValueError, match="mode 'int4' is not supported"):
        quantize_model(tiny_bert(), mode="int4")
    with pytest.raises(ValueError, match="group_size=7 does not divide"):
        quantize_model(tiny_bert(), group_size=7)
    with pytest.raises(ValueError, match="select no module"):
        quantize_model(tiny_bert(), targets=["query"], skip=["query"])
    ints = tiny_bert()
    ints.bert.encoder.layer[0].attention.self.query.kernel = nnx.Param(jnp.zeros((36, 36), jnp.int32))
    with pytest.raises(TypeError, match="int32.*floating-point"):
        quantize_model(ints)
    assert not quantized_paths(ints)  # nothing replaced when a module fails
    with pytest.raises(ValueError, match="already a float model"):
        dequantize_model(tiny_bert())


def test_dequantize_model_is_a_float_copy_with_the_int8_numbers():
    model = quantize_model(tiny_bert())
    ids = ids_batch()
    float_model = dequantize_model(model)
    assert quantized_paths(model) and not quantized_paths(float_model)
    np.testing.assert_allclose(np.asarray(float_model(ids)), np.asarray(model(ids)), atol=1e-5)


# ---------------------------------------------------------------- memory


def test_memory_report_by_dtype_and_module():
    model = quantize_model(tiny_bert(hidden_size=96, intermediate_size=192, num_attention_heads=4))
    report = param_bytes(model)
    assert set(report.by_dtype) == {"float32", "int8"}
    assert report.by_dtype["int8"] == 2 * (4 * 96 * 96 + 2 * 96 * 192)
    assert sum(report.by_module.values()) == report.total == sum(report.by_dtype.values())
    assert report.by_module["bert.encoder.layer.0.attention.self.query"] == 96 * 96 + 4 * 96 + 4 * 96
    table = report.table(depth=3)
    assert "bert.encoder.layer" in table and "int8" in table
    float_bytes = param_bytes(tiny_bert(hidden_size=96, intermediate_size=192, num_attention_heads=4))
    paths = quantized_paths(model)
    assert report.bytes_under(paths) <= 0.30 * float_bytes.bytes_under(paths)  # 0.25 + 2/in at in=96


# ---------------------------------------------------------------- persistence and export


def test_save_and_load_int8_round_trip(tmp_path):
    model = quantize_model(tiny_bert(num_labels=3, intermediate_size=48), targets=["query", "dense", "word_embeddings"],
                           mode="w8a8", group_size=12)
    ids = ids_batch()
    save_quantized(model, tmp_path)
    assert (tmp_path / WEIGHTS_NAME).is_file() and not (tmp_path / "model.safetensors").exists()
    meta = json.loads((tmp_path / "config.json").read_text())["jaxkernel_quantization"]
    assert meta["modules"]["bert.encoder.layer.0.attention.self.query"] == {
        "kind": "linear", "mode": "w8a8", "group_size": 12}
    loaded = load_quantized(tmp_path)
    assert type(loaded) is type(model) and quantized_paths(loaded) == quantized_paths(model)
    np.testing.assert_array_equal(np.asarray(loaded(ids)), np.asarray(model(ids)))
    layer = loaded.bert.encoder.layer[1].attention.self.query
    assert layer.kernel.dtype == jnp.int8 and layer.mode == "w8a8" and layer.group_size == 12


def test_load_refuses_float_dirs_and_mismatched_tensors(tmp_path):
    jaxkernel.save_pretrained(tiny_bert(), tmp_path / "float")
    with pytest.raises(FileNotFoundError, match="not a jaxkernel int8 directory"):
        load_quantized(tmp_path / "float")
    with pytest.raises(ValueError, match="no int8 modules"):
        save_quantized(tiny_bert(), tmp_path / "x")
    save_quantized(quantize_model(tiny_bert()), tmp_path / "q")
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    config["intermediate_size"] = 52
    (tmp_path / "q" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="intermediate.dense.*the model expects float32\\[52\\]"):
        load_quantized(tmp_path / "q")


def test_export_writes_dequantized_float_weights_transformers_loads(tmp_path):
    model = quantize_model(tiny_bert(num_labels=3))
    ids, mask = padded_batch(97)
    jaxkernel.save_pretrained(dequantize_model(model), tmp_path)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert hf.bert.encoder.layer[0].attention.self.query.weight.dtype == torch.float32
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_allclose(np.asarray(model(ids, mask)), ref, atol=1e-5)
    kernel = model.bert.encoder.layer[0].attention.self.query
    np.testing.assert_array_equal(  # the exported weight is exactly q * scale
        hf.bert.encoder.layer[0].attention.self.query.weight.detach().numpy().T,
        np.asarray(dequantize(kernel.kernel[...], kernel.scale[...])),
    )


def test_cli_quantize_verb(tmp_path, capsys):
    src = tmp_path / "hf"
    hf_bert("h36-heads3", "token-classification", num_labels=4).save_pretrained(src)
    assert cli_main(["quantize", str(src), str(tmp_path / "q8"), "--mode", "w8a8", "--hf-out",
                     str(tmp_path / "back")]) == 0
    out = capsys.readouterr().out
    assert "quantized 12 modules (w8a8)" in out and "int8" in out
    model = load_quantized(tmp_path / "q8")
    assert model.task == "token-classification" and len(quantized_paths(model)) == 12
    transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "back")
    assert cli_main(["quantize", str(src), str(tmp_path / "bad"), "--targets", "qurey"]) == 1
    assert "matches no Linear/Embed module" in capsys.readouterr().err


# ---------------------------------------------------------------- sharding


@pytest.mark.parametrize("mode", ["weight_only", "w8a8"])
def test_int8_state_shards_by_its_logical_axes(mode):
    from jaxkernel.sharding.mesh import MeshConfig, make_mesh
    from jaxkernel.sharding.rules import get_rules, tree_shardings

    model = quantize_model(tiny_gpt2(n_embd=48, n_head=4), mode=mode)
    ids = ids_batch(shape=(8, 7))
    expected, _ = model(ids)
    mesh = make_mesh(MeshConfig.for_preset("fsdp_tp"))
    graphdef, state = nnx.split(model)
    shardings = tree_shardings(state, mesh, get_rules("fsdp_tp"))
    state = jax.device_put(state, shardings)
    kernel = state["transformer"]["h"][0]["mlp"]["c_fc"]["kernel"]
    assert isinstance(kernel, Int8Weight) and kernel[...].dtype == jnp.int8
    assert len(kernel[...].sharding.device_set) == 8 and not kernel[...].sharding.is_fully_replicated
    logits, _ = jax.jit(lambda s, ids: nnx.merge(graphdef, s)(ids))(state, ids)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), atol=1e-4)


def test_int8_state_round_trips_through_orbax(tmp_path):
    from jaxkernel.checkpoint import Checkpointer, abstract_like

    model = quantize_model(tiny_bert(intermediate_size=48), mode="w8a8", group_size=12)
    state = nnx.state(model, nnx.Not(nnx.RngState))
    ckpt = Checkpointer(tmp_path / "ckpt", async_save=False)
    ckpt.save(1, state, meta={"what": "int8"})
    restored, meta = ckpt.restore(1, abstract_like(state))
    ckpt.close()
    assert meta == {"what": "int8"}
    flat = dict(nnx.to_flat_state(restored))
    for path, var in nnx.to_flat_state(state):
        assert type(flat[path]) is type(var)
        assert flat[path][...].dtype == var[...].dtype
        np.testing.assert_array_equal(np.asarray(flat[path][...]), np.asarray(var[...]))
    assert any(isinstance(v, Int8Weight) for _, v in nnx.to_flat_state(restored))
