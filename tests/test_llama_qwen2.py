"""Qwen2 (the Llama architecture, q/k/v biases, optional per-layer sliding window) equals transformers:
every head, left padding, greedy generation, round trip, LoRA and prefix tuning with peft."""

import json

import numpy as np
import peft
import pytest
import torch
import transformers

import jaxkernel
from jaxkernel.hf.io import read_weights
from jaxkernel.models.generation import generate
from jaxkernel.peft import LoraConfig, PrefixConfig, apply_lora, apply_prefix_tuning
from peft_helpers import ours_from_hf, ours_output, randomise_trainable, torch_output
from test_llama_parity import hf_reference
from tiny_models import QWEN2_CONFIGS, QWEN2_HEADS, hf_qwen2, padded_batch

ATOL = 1e-5
NEW_TOKENS = 32


def vocab(name):
    return QWEN2_CONFIGS[name]["vocab_size"]


@pytest.mark.parametrize("name", list(QWEN2_CONFIGS))
@pytest.mark.parametrize("task", list(QWEN2_HEADS))
@pytest.mark.parametrize("left", [False, True], ids=["right-pad", "left-pad"])
def test_every_head_matches_transformers(tmp_path, name, task, left):
    hf_model = hf_qwen2(name, task, num_labels=3, pad_token_id=0)
    hf_model.save_pretrained(tmp_path)
    model = jaxkernel.from_pretrained(tmp_path)
    assert model.task == task and model.config.model_type == "qwen2"
    attn = (model if task == "feature-extraction" else model.model).layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.k_proj.bias is not None and attn.o_proj.bias is None
    assert model.config.layer_windows == tuple(l.self_attn.sliding_window for l in hf_model.base_model.layers)

    ids, mask = padded_batch(vocab(name), lengths=(10, 6, 3), seed=1, left=left)
    ref = hf_reference(hf_model, ids, mask)
    real = mask.astype(bool)
    if task == "sequence-classification":
        got, want = np.asarray(model(ids, mask)), ref.logits.numpy()
    elif task == "causal-lm":
        got, want = np.asarray(model(ids, mask)[0])[real], ref.logits.numpy()[real]
    else:
        got, want = np.asarray(model(ids, mask)[0])[real], ref.last_hidden_state.numpy()[real]
    diff = float(np.abs(got - want).max())
    print(name, task, f"{diff:.1e}")
    assert diff <= ATOL


@pytest.mark.parametrize("name", ["q36-gqa3", "q32-window5-layers1+"])
@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_greedy_generation_is_token_identical(tmp_path, name, use_cache):
    hf = hf_qwen2(name, "causal-lm", seed=1)
    with torch.no_grad():
        hf.model.embed_tokens.weight.mul_(5.0)
    hf.save_pretrained(tmp_path)
    model = jaxkernel.from_pretrained(tmp_path)
    ids, mask = padded_batch(vocab(name), lengths=(7, 4, 5), seed=1, left=True)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=NEW_TOKENS,
                          do_sample=False, pad_token_id=0, eos_token_id=None).numpy()
    ours = np.asarray(generate(model, ids, mask, max_new_tokens=NEW_TOKENS, use_cache=use_cache))
    assert len(np.unique(ref[:, 7:])) >= 5, "reference output too repetitive to be a real check"
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("task", list(QWEN2_HEADS))
def test_round_trip(tmp_path, task):
    auto = {"feature-extraction": transformers.AutoModel, "causal-lm": transformers.AutoModelForCausalLM,
            "sequence-classification": transformers.AutoModelForSequenceClassification}[task]
    for name in QWEN2_CONFIGS:
        hf = hf_qwen2(name, task, num_labels=3, pad_token_id=0)
        hf.save_pretrained(tmp_path / name / "src")
        jaxkernel.save_pretrained(jaxkernel.from_pretrained(tmp_path / name / "src"), tmp_path / name / "out")
        original, _ = read_weights(tmp_path / name / "src")
        exported, _ = read_weights(tmp_path / name / "out")
        assert sorted(exported) == sorted(original)
        for key in original:
            np.testing.assert_array_equal(exported[key], original[key], err_msg=key)
        reloaded, info = auto.from_pretrained(tmp_path / name / "out", output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
        config = json.loads((tmp_path / name / "out" / "config.json").read_text())
        assert config["model_type"] == "qwen2" and config["architectures"][0].startswith("Qwen2")
        for key in ("sliding_window", "layer_types", "use_sliding_window", "tie_word_embeddings"):
            assert getattr(reloaded.config, key) == getattr(hf.config, key), key


def test_window_only_with_use_sliding_window():
    from jaxkernel.models.registry import family_for

    qwen2 = family_for("qwen2", "config.json")
    base = {"model_type": "qwen2", "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 4,
            "sliding_window": 8, "max_window_layers": 2}
    assert qwen2.config_from_hf(dict(base), {}).layer_windows == (None,) * 4  # use_sliding_window false
    on = qwen2.config_from_hf(dict(base, use_sliding_window=True), {})
    assert on.layer_windows == (None, None, 8, 8)


def test_lora_and_prefix_with_peft(tmp_path):
    name, task = "q36-gqa3", "sequence-classification"
    ids, mask = padded_batch(vocab(name), lengths=(9, 6, 3))
    for method in ("lora", "prefix"):
        hf = hf_qwen2(name, task, num_labels=3, pad_token_id=0)
        ours = ours_from_hf(hf, tmp_path / method / "base", task)
        if method == "lora":
            apply_lora(ours, LoraConfig(r=4, alpha=8))  # PEFT's default q_proj, v_proj
        else:
            apply_prefix_tuning(ours, PrefixConfig(num_virtual_tokens=4))
        randomise_trainable(ours, seed=3)
        jaxkernel.save_adapter(ours, tmp_path / method / "adapter")
        loaded = peft.PeftModel.from_pretrained(hf, tmp_path / method / "adapter").eval()
        if method == "lora":
            with torch.no_grad():
                theirs = torch_output(loaded(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)), task)
        else:
            from peft_helpers import peft_prefix_forward

            theirs = torch_output(peft_prefix_forward(loaded, ids, mask), task)
        diff = np.abs(ours_output(ours, task, ids, mask) - theirs).max()
        print(method, f"max|diff| = {diff:.1e}")
        assert diff <= ATOL
        again = ours_from_hf(hf_qwen2(name, task, num_labels=3, pad_token_id=0), tmp_path / method / "base2", task)
        jaxkernel.load_adapter(again, tmp_path / method / "adapter")
        np.testing.assert_array_equal(ours_output(again, task, ids, mask), ours_output(ours, task, ids, mask))


@pytest.mark.parametrize("name", list(QWEN2_CONFIGS))
def test_transformers_configs_load_strictly(name):
    """Every key transformers writes for Qwen2 is known (use_sliding_window, max_window_layers...)."""
    from jaxkernel.models.registry import family_for

    hf = hf_qwen2(name, "sequence-classification", num_labels=3, pad_token_id=0).config
    config = family_for("qwen2", "config.json").config_from_hf(hf.to_dict(), {"strict": True})
    assert config.layer_windows == tuple(
        hf.sliding_window if t == "sliding_attention" else None for t in hf.layer_types)
