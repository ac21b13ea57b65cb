"""Llama HF dir -> jaxkernel -> HF dir: bit-identical tensors, a config transformers reads back unchanged."""

import json

import numpy as np
import pytest
import torch
import transformers

import jaxkernel
from jaxkernel.hf.io import read_weights
from tiny_models import LLAMA_CONFIGS, LLAMA_HEADS, hf_llama, padded_batch

AUTO = {
    "feature-extraction": transformers.AutoModel,
    "sequence-classification": transformers.AutoModelForSequenceClassification,
    "causal-lm": transformers.AutoModelForCausalLM,
}
ARCH_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "head_dim", "rms_norm_eps", "tie_word_embeddings", "attention_bias", "mlp_bias", "rope_parameters",
             "vocab_size", "max_position_embeddings", "num_labels", "pad_token_id")


@pytest.mark.parametrize("name", list(LLAMA_CONFIGS))
@pytest.mark.parametrize("task", list(LLAMA_HEADS))
def test_llama_round_trip(tmp_path, name, task):
    hf = hf_llama(name, task, num_labels=3, pad_token_id=0)
    hf.save_pretrained(tmp_path / "src")
    model = jaxkernel.from_pretrained(tmp_path / "src")
    jaxkernel.save_pretrained(model, tmp_path / "out")

    original, _ = read_weights(tmp_path / "src")
    exported, _ = read_weights(tmp_path / "out")
    assert sorted(exported) == sorted(original)
    for key in original:
        assert exported[key].dtype == original[key].dtype, key
        np.testing.assert_array_equal(exported[key], original[key], err_msg=key)

    reloaded, info = AUTO[task].from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert type(reloaded).__name__ == json.loads((tmp_path / "out" / "config.json").read_text())["architectures"][0]
    for key in ARCH_KEYS:
        assert getattr(reloaded.config, key) == getattr(hf.config, key), key
    # The exported config also computes the same thing (rope scaling, tying, biases...).
    ids, mask = padded_batch(LLAMA_CONFIGS[name]["vocab_size"], lengths=(8, 5), seed=3)
    with torch.no_grad():
        inputs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
        a, b = hf.eval()(**inputs), reloaded.eval()(**inputs)
    out = "last_hidden_state" if task == "feature-extraction" else "logits"
    np.testing.assert_array_equal(getattr(a, out).numpy(), getattr(b, out).numpy())


def test_exported_config_keeps_v4_rope_keys_and_eos_lists(tmp_path):
    """transformers 4 readers get rope_theta/rope_scaling; a list of EOS ids stays a list."""
    hf = hf_llama("h30-mha-tied-llama3", "causal-lm")
    hf.config.eos_token_id = [2, 5]
    hf.save_pretrained(tmp_path / "src")
    model = jaxkernel.from_pretrained(tmp_path / "src")
    assert model.config.eos_token_ids == (2, 5)
    jaxkernel.save_pretrained(model, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["eos_token_id"] == [2, 5]
    assert config["rope_theta"] == 500.0 and config["rope_scaling"]["rope_type"] == "llama3"
    assert config["rope_parameters"] == {"rope_theta": 500.0, **config["rope_scaling"]}
