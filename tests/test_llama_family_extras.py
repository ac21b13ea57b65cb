"""Llama family beyond parity: int8 bases with LoRA, planner sizes, the preset.

Parity, generation, PEFT exchange and the real SmolLM2 checkpoint have their own
modules (test_llama_*.py); sharded training is in test_sharding_train.py.
"""

import numpy as np
import pytest
from flax import nnx

from jaxkernel.models.registry import family_for
from jaxkernel.models.sizes import abstract_model, count_params
from jaxkernel.peft import LoraConfig, apply_lora
from jaxkernel.quant.transform import quantize_model, quantized_paths

TINY = dict(vocab_size=97, hidden_size=48, intermediate_size=72, num_hidden_layers=2, num_attention_heads=6,
            num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)


@pytest.mark.parametrize("model_type, extra", [("llama", {}), ("qwen2", {}), ("mistral", {"sliding_window": 4096})])
@pytest.mark.parametrize("mode, tol", [("weight_only", 0.02), ("w8a8", 0.05)])
def test_int8_base_with_lora_stays_close(model_type, extra, mode, tol):
    family = family_for(model_type, "test")
    config = family.config(**TINY, **extra)
    reference = family.build("causal-lm", config, seed=3)
    model = family.build("causal-lm", config, seed=3)
    quantize_model(model, mode=mode)
    paths = quantized_paths(model)
    assert len(paths) == 7 * TINY["num_hidden_layers"]  # q, k, v, o, gate, up, down in every layer; lm_head float
    assert all(f".{family.layers_path}." in p for p in paths)
    apply_lora(model, LoraConfig(r=4, alpha=8))
    ids = np.random.RandomState(0).randint(3, 97, (2, 11)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :4] = 0  # left padding
    want, _ = reference(ids, mask)
    got, _ = model(ids, mask)
    rel = np.abs(np.asarray(got) - np.asarray(want)).max() / np.abs(np.asarray(want)).max()
    assert rel < tol, f"{model_type} {mode}: relative logit error {rel:.4f}"


@pytest.mark.parametrize("name, expected", [
    ("llama-3-8b", 8.03e9), ("mistral-7b", 7.24e9), ("qwen2-0.5b", 494e6),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", 134.5e6),
])
def test_planner_parameter_counts_within_one_percent(name, expected):
    count = count_params(abstract_model(name, "causal-lm"))
    assert abs(count - expected) / expected < 0.01, f"{name}: {count:,} parameters"
