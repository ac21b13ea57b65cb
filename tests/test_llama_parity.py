"""Llama logits and hidden states equal transformers PyTorch (GQA, rope scaling, tied/untied); cache == no cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxkernel
from jaxkernel.models.attention import KVCache, attention, position_ids_from_mask, rope_inverse_frequencies
from jaxkernel.models.llama import LlamaConfig
from tiny_models import LLAMA_CONFIGS, LLAMA_HEADS, hf_llama, padded_batch

ATOL = 1e-5


def hf_reference(hf_model, ids, mask):
    """HF forward with the position ids HF generate would use (cumsum(mask) - 1)."""
    positions = np.asarray(position_ids_from_mask(jnp.asarray(mask)))
    with torch.no_grad():
        return hf_model(
            torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions),
            output_hidden_states=True,
        )


@pytest.mark.parametrize("name", list(LLAMA_CONFIGS))
@pytest.mark.parametrize("task", list(LLAMA_HEADS))
@pytest.mark.parametrize("left", [False, True], ids=["right-pad", "left-pad"])
def test_every_head_matches_transformers(tmp_path, name, task, left):
    num_labels = 5 if name.startswith("h36-gqa") else 2
    hf_model = hf_llama(name, task, num_labels=num_labels, pad_token_id=0)
    hf_model.save_pretrained(tmp_path)
    model = jaxkernel.from_pretrained(tmp_path)
    assert model.task == task and model.config.model_type == "llama"
    assert model.config.num_key_value_heads == LLAMA_CONFIGS[name]["num_key_value_heads"]
    rope = LLAMA_CONFIGS[name]["rope_parameters"]
    assert (model.config.scaling_dict or {}).get("rope_type", "default") == rope["rope_type"]
    assert model.config.rope_theta == rope["rope_theta"]

    ids, mask = padded_batch(LLAMA_CONFIGS[name]["vocab_size"], lengths=(10, 6, 3), seed=1, left=left)
    ref = hf_reference(hf_model, ids, mask)
    real = mask.astype(bool)  # values at padded positions are meaningless in both libraries
    decoder = model if task == "feature-extraction" else model.model
    hidden, _ = decoder(ids, mask)
    diffs = {"hidden": np.abs(np.asarray(hidden)[real] - ref.hidden_states[-1].numpy()[real]).max()}
    if task == "causal-lm":
        logits, _ = model(ids, mask)
        diffs["logits"] = np.abs(np.asarray(logits)[real] - ref.logits.numpy()[real]).max()
    elif task == "sequence-classification":
        logits = model(ids, mask)
        assert logits.shape == (3, num_labels)
        diffs["logits"] = np.abs(np.asarray(logits) - ref.logits.numpy()).max()
    print(name, task, {k: f"{v:.1e}" for k, v in diffs.items()})
    assert max(diffs.values()) <= ATOL, diffs


@pytest.mark.parametrize("name", ["h36-gqa3-linear-bias", "h36-q9-kv1"])
def test_cache_and_no_cache_give_the_same_logits(tmp_path, name):
    hf_llama(name, "causal-lm").save_pretrained(tmp_path)
    model = jaxkernel.from_pretrained(tmp_path)
    ids, mask = padded_batch(LLAMA_CONFIGS[name]["vocab_size"], lengths=(9, 5), seed=2, left=True)
    full, _ = model(ids, mask)

    prompt = 4
    cache = KVCache.create(model.config, batch=2, max_length=ids.shape[1])
    assert cache.keys.shape[-2:] == (model.config.num_key_value_heads, model.config.attention_head_dim)
    logits, cache = model(ids[:, :prompt], mask[:, :prompt], cache=cache)
    steps = [logits]
    for t in range(prompt, ids.shape[1]):
        logits, cache = model(ids[:, t : t + 1], mask[:, t : t + 1], cache=cache)
        steps.append(logits)
    incremental = np.concatenate([np.asarray(s) for s in steps], axis=1)
    real = mask.astype(bool)
    np.testing.assert_allclose(incremental[real], np.asarray(full)[real], atol=ATOL)


@pytest.mark.parametrize("kv_heads", [1, 2, 6])
def test_grouped_query_attention_equals_repeated_kv_heads(kv_heads):
    """attention() with K < N heads == multi-head attention on kv heads repeated HF-style (repeat_kv)."""
    keys = jax.random.split(jax.random.key(0), 5)
    q = jax.random.normal(keys[0], (2, 5, 6, 4))
    k = jax.random.normal(keys[1], (2, 7, kv_heads, 4))
    v = jax.random.normal(keys[2], (2, 7, kv_heads, 4))
    prefix = tuple(jax.random.normal(kk, (2, 3, kv_heads, 4)) for kk in keys[3:])
    mask = jax.random.bernoulli(keys[4], 0.7, (2, 1, 5, 7)).at[..., 0].set(True)
    repeat = lambda t: jnp.repeat(t, 6 // kv_heads, axis=2)  # noqa: E731 - query head n reads kv head n // G
    grouped = attention(q, k, v, mask, prefix_kv=prefix)
    full = attention(q, repeat(k), repeat(v), mask, prefix_kv=tuple(repeat(p) for p in prefix))
    np.testing.assert_allclose(np.asarray(grouped), np.asarray(full), atol=1e-6)


def test_rope_frequencies_match_transformers():
    from transformers import LlamaConfig as HfLlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for name, values in LLAMA_CONFIGS.items():
        hf = HfLlamaConfig(**values)
        rope = dict(values["rope_parameters"])
        theta = rope.pop("rope_theta")
        head_dim = values.get("head_dim") or values["hidden_size"] // values["num_attention_heads"]
        ours = rope_inverse_frequencies(head_dim, theta, rope)
        if rope["rope_type"] == "default":
            expected = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        else:
            expected, _ = ROPE_INIT_FUNCTIONS[rope["rope_type"]](hf)
        np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("rope_type", ["yarn", "dynamic", "longrope"])
def test_unsupported_rope_scaling_is_refused_by_name(tmp_path, rope_type):
    with pytest.raises(ValueError, match=f"rope_scaling type '{rope_type}' is not supported.*linear, llama3"):
        LlamaConfig(hidden_size=32, num_attention_heads=4, rope_scaling={"rope_type": rope_type, "factor": 2.0})
    hf_llama("h36-q9-kv1", "causal-lm").save_pretrained(tmp_path)
    config = (tmp_path / "config.json").read_text()
    rope = '"rope_type": "default"'
    assert rope in config
    (tmp_path / "config.json").write_text(config.replace(rope, f'"rope_type": "{rope_type}", "factor": 2.0'))
    with pytest.raises(ValueError, match=f"config.json: rope_scaling type '{rope_type}'"):
        jaxkernel.from_pretrained(tmp_path)


def test_config_errors_speak_to_the_user():
    with pytest.raises(ValueError, match="not a multiple of num_key_value_heads 4"):
        LlamaConfig(hidden_size=36, num_attention_heads=6, num_key_value_heads=4)
    with pytest.raises(ValueError, match="set head_dim"):
        LlamaConfig(hidden_size=35, num_attention_heads=6)
    assert LlamaConfig(hidden_size=35, num_attention_heads=5, head_dim=8).attention_head_dim == 8
    config = LlamaConfig(eos_token_id=[5, 7], rope_scaling={"rope_type": "linear", "factor": 2.0})
    hash(config)  # a jit static argument inside the model graph
    assert config.eos_token_ids == (5, 7) and config.scaling_dict == {"rope_type": "linear", "factor": 2.0}


def test_legacy_v4_rope_keys_are_read(tmp_path):
    """A transformers 4 config.json (rope_theta + rope_scaling with 'type') loads like the v5 form."""
    from jaxkernel.hf.llama import llama_config_from_hf

    v4 = {"model_type": "llama", "hidden_size": 36, "num_attention_heads": 6, "rope_theta": 1000.0,
          "rope_scaling": {"type": "linear", "factor": 2.5}}
    config = llama_config_from_hf(v4, {})
    assert config.rope_theta == 1000.0 and config.scaling_dict == {"type": "linear", "factor": 2.5}
    np.testing.assert_array_equal(
        rope_inverse_frequencies(6, 1000.0, config.scaling_dict),
        rope_inverse_frequencies(6, 1000.0, {"rope_type": "linear", "factor": 2.5}),
    )
