"""Llama LoRA and prefix tuning exchanged with peft both ways (PEFT's default targets, GQA); merged export."""

import json

import numpy as np
import peft
import pytest
import torch
import transformers
from safetensors.numpy import load_file

import jaxkernel
from jaxkernel.hf.peft_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from jaxkernel.peft import LoraConfig, PrefixConfig, apply_lora, apply_prefix_tuning, lora_layers
from peft_helpers import (
    PEFT_TASK, ours_from_hf, ours_output, peft_lora_paths, peft_prefix_forward, randomise_trainable, torch_output,
)
from tiny_models import LLAMA_CONFIGS, hf_llama, padded_batch

# 6/2 grouped heads with biases and head_dim 8; 9 query heads on one kv head.
CASES = [("h36-gqa3-linear-bias", "causal-lm"), ("h36-q9-kv1", "causal-lm"),
         ("h36-gqa3-linear-bias", "sequence-classification")]
CASE_IDS = ["gqa3-causal-lm", "kv1-causal-lm", "gqa3-seq-cls"]
AUTO = {"causal-lm": transformers.AutoModelForCausalLM,
        "sequence-classification": transformers.AutoModelForSequenceClassification}
ATOL = 1e-5


def batch(name):
    return padded_batch(LLAMA_CONFIGS[name]["vocab_size"], lengths=(9, 6, 3))  # right padding


def hf_model(name, task):
    return hf_llama(name, task, num_labels=3, pad_token_id=0)


def compare(ours, theirs, task, mask):
    """Max |diff|; causal-LM pads are meaningless in both libraries, so real tokens only."""
    if task == "causal-lm":
        keep = mask.astype(bool)
        ours, theirs = ours[keep], theirs[keep]
    diff = float(np.abs(ours - theirs).max())
    print(f"max|diff| = {diff:.2e}")
    assert diff <= ATOL, diff


def peft_logits(peft_model, task, ids, mask, prefix=False):
    if prefix and task != "causal-lm":  # PEFT's prefix forward for seq-cls, step by step (see peft_helpers)
        return torch_output(peft_prefix_forward(peft_model, ids, mask), task)
    with torch.no_grad():
        return torch_output(peft_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)), task)


def randomise_peft_heads(peft_model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "modules_to_save" in name:
                param.add_(torch.randn(param.shape, generator=gen) * 0.3)


@pytest.mark.parametrize("name,task", CASES, ids=CASE_IDS)
def test_lora_export_loads_in_peft_with_the_same_logits(tmp_path, name, task):
    hf = hf_model(name, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    apply_lora(ours, LoraConfig(r=4, alpha=8))  # family default: PEFT's q_proj, v_proj
    assert sorted(lora_layers(ours)) == sorted(
        f"model.layers.{i}.self_attn.{p}" for i in range(LLAMA_CONFIGS[name]["num_hidden_layers"])
        for p in ("q_proj", "v_proj")
    )
    randomise_trainable(ours, seed=1)
    jaxkernel.save_adapter(ours, tmp_path / "adapter")
    hf_config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    assert hf_config["task_type"] == PEFT_TASK[task] and hf_config["fan_in_fan_out"] is False
    loaded = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    ids, mask = batch(name)
    compare(ours_output(ours, task, ids, mask), peft_logits(loaded, task, ids, mask), task, mask)

    loaded.save_pretrained(tmp_path / "resaved")  # same keys, shapes and values as PEFT writes
    ours_file = load_file(str(tmp_path / "adapter" / ADAPTER_WEIGHTS))
    theirs_file = load_file(str(tmp_path / "resaved" / ADAPTER_WEIGHTS))
    assert {k: v.shape for k, v in ours_file.items()} == {k: v.shape for k, v in theirs_file.items()}
    for key in theirs_file:
        np.testing.assert_array_equal(ours_file[key], theirs_file[key], err_msg=key)
    if task == "sequence-classification":
        assert "base_model.model.score.weight" in ours_file


@pytest.mark.parametrize("name,task", CASES, ids=CASE_IDS)
def test_lora_trained_in_peft_with_default_targets_imports(tmp_path, name, task):
    hf = hf_model(name, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    config = peft.LoraConfig(r=4, lora_alpha=6, task_type=PEFT_TASK[task], init_lora_weights=False)
    torch.manual_seed(2)
    trained = peft.get_peft_model(hf, config).eval()
    randomise_peft_heads(trained, seed=3)
    trained.save_pretrained(tmp_path / "adapter")
    assert sorted(json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())["target_modules"]) == ["q_proj", "v_proj"]
    jaxkernel.load_adapter(ours, tmp_path / "adapter")
    assert sorted(lora_layers(ours)) == peft_lora_paths(trained)
    ids, mask = batch(name)
    compare(ours_output(ours, task, ids, mask), peft_logits(trained, task, ids, mask), task, mask)


@pytest.mark.parametrize("name,task", CASES, ids=CASE_IDS)
def test_merged_export_loads_in_plain_transformers(tmp_path, name, task):
    hf = hf_model(name, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    apply_lora(ours, LoraConfig(r=4, alpha=8, target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj")))
    randomise_trainable(ours, seed=4)
    ids, mask = batch(name)
    expected = ours_output(ours, task, ids, mask)
    jaxkernel.save_merged(ours, tmp_path / "merged")
    merged, info = AUTO[task].from_pretrained(tmp_path / "merged", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        logits = torch_output(merged.eval()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)), task)
    compare(expected, logits, task, mask)


@pytest.mark.parametrize("projection", [False, True], ids=["flat", "projection"])
@pytest.mark.parametrize("name,task", CASES, ids=CASE_IDS)
def test_prefix_export_loads_in_peft_with_the_same_logits(tmp_path, name, task, projection):
    hf = hf_model(name, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    apply_prefix_tuning(ours, PrefixConfig(num_virtual_tokens=5, prefix_projection=projection, encoder_hidden_size=16))
    randomise_trainable(ours, seed=5)
    jaxkernel.save_adapter(ours, tmp_path / "adapter")
    values = LLAMA_CONFIGS[name]
    kv_width = values["num_key_value_heads"] * (values.get("head_dim") or values["hidden_size"] // values["num_attention_heads"])
    tensors = load_file(str(tmp_path / "adapter" / ADAPTER_WEIGHTS))
    assert tensors["prompt_embeddings"].shape == (5, values["num_hidden_layers"] * 2 * kv_width)
    loaded = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    ids, mask = batch(name)
    compare(ours_output(ours, task, ids, mask), peft_logits(loaded, task, ids, mask, prefix=True), task, mask)


@pytest.mark.parametrize("name,task", CASES, ids=CASE_IDS)
def test_prefix_trained_in_peft_imports_with_the_same_logits(tmp_path, name, task):
    hf = hf_model(name, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    torch.manual_seed(6)
    trained = peft.get_peft_model(hf, peft.PrefixTuningConfig(num_virtual_tokens=4, task_type=PEFT_TASK[task])).eval()
    randomise_peft_heads(trained, seed=7)
    ids, mask = batch(name)
    expected = peft_logits(trained, task, ids, mask, prefix=True)
    trained.save_pretrained(tmp_path / "adapter")
    jaxkernel.load_adapter(ours, tmp_path / "adapter")
    assert ours.peft_config.num_virtual_tokens == 4
    compare(ours_output(ours, task, ids, mask), expected, task, mask)


def test_prefix_generation_is_greedy_under_peft_forward(tmp_path):
    """Greedy decoding through a prefix (left padding, positions from P) follows PEFT's prefix forward.

    Teacher-forced on our output, as in test_prefix.py: PEFT 0.21.2's own ``generate`` drops
    the prefix with transformers 5.24, so it cannot be the reference.
    """
    from jaxkernel.models.generation import generate

    name, P, new = "h36-gqa3-linear-bias", 3, 12
    hf = hf_llama(name, "causal-lm", seed=1)
    with torch.no_grad():
        hf.model.embed_tokens.weight.mul_(3.0)
    ours = ours_from_hf(hf, tmp_path / "base", "causal-lm")
    ids, mask = padded_batch(LLAMA_CONFIGS[name]["vocab_size"], lengths=(7, 4, 5), seed=1, left=True)
    plain = np.asarray(generate(ours, ids, mask, max_new_tokens=new))
    apply_prefix_tuning(ours, PrefixConfig(num_virtual_tokens=P))
    randomise_trainable(ours, seed=8, scale=2.0)
    jaxkernel.save_adapter(ours, tmp_path / "adapter")
    loaded = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    for use_cache in (True, False):
        got = np.asarray(generate(ours, ids, mask, max_new_tokens=new, use_cache=use_cache))
        assert not np.array_equal(got, plain), "the prefix changed nothing: not a real check"
        full_mask = np.concatenate([mask, np.ones((3, new), mask.dtype)], axis=1)
        positions = np.where(full_mask.astype(bool), full_mask.cumsum(-1) - 1 + P, 1)
        extended = np.concatenate([np.ones((3, P), mask.dtype), full_mask], axis=1)
        with torch.no_grad():
            logits = loaded.base_model(
                input_ids=torch.tensor(got), attention_mask=torch.tensor(extended),
                past_key_values=loaded.get_prompt(3), position_ids=torch.tensor(positions),
            ).logits.numpy()
        np.testing.assert_array_equal(got[:, 7:], logits[:, 6:-1].argmax(-1))
