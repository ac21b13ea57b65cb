"""Mistral (the Llama architecture + sliding-window attention) equals transformers: every head,
left padding, greedy generation past the window, round trip, LoRA and prefix tuning with peft."""

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
from tiny_models import MISTRAL_CONFIGS, MISTRAL_HEADS, hf_mistral, padded_batch

ATOL = 1e-5
NEW_TOKENS = 32


def vocab(name):
    return MISTRAL_CONFIGS[name]["vocab_size"]


@pytest.mark.parametrize("name", list(MISTRAL_CONFIGS))
@pytest.mark.parametrize("task", list(MISTRAL_HEADS))
@pytest.mark.parametrize("left", [False, True], ids=["right-pad", "left-pad"])
def test_every_head_matches_transformers(tmp_path, name, task, left):
    hf_model = hf_mistral(name, task, num_labels=3, pad_token_id=0)
    hf_model.save_pretrained(tmp_path)
    model = jaxkernel.from_pretrained(tmp_path)
    assert model.task == task and model.config.model_type == "mistral"
    assert model.config.sliding_window == MISTRAL_CONFIGS[name]["sliding_window"]

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


def test_the_window_matters():
    """Guard against a vacuous test: without the window our logits would differ from Mistral's."""
    import dataclasses

    from jaxkernel.hf.pretrained import load_tensors
    from jaxkernel.models.llama import LlamaForCausalLM
    from flax import nnx

    hf = hf_mistral("m36-gqa3-window4", "causal-lm")
    ids, mask = padded_batch(vocab("m36-gqa3-window4"), lengths=(10,), seed=1)
    ref = hf_reference(hf, ids, mask).logits.numpy()
    tensors = {k: v.numpy() for k, v in hf.state_dict().items()}
    for window, close in ((4, True), (None, False)):
        from jaxkernel.hf.llama import llama_config_from_hf

        config = dataclasses.replace(llama_config_from_hf(hf.config.to_dict(), {}), sliding_window=window)
        model = LlamaForCausalLM(config, rngs=nnx.Rngs(0))
        load_tensors(model, tensors, source="state_dict")
        assert np.allclose(np.asarray(model(ids, mask)[0]), ref, atol=ATOL) is close


@pytest.mark.parametrize("name", ["m36-gqa3-window4", "m30-kv1-window7-tied"])
@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_greedy_generation_past_the_window_is_token_identical(tmp_path, name, use_cache):
    hf = hf_mistral(name, "causal-lm", seed=1)
    with torch.no_grad():  # larger untied embeddings keep greedy output varied; tied ones repeat if scaled
        hf.model.embed_tokens.weight.mul_(1.0 if hf.config.tie_word_embeddings else 5.0)
    hf.save_pretrained(tmp_path)
    model = jaxkernel.from_pretrained(tmp_path)
    ids, mask = padded_batch(vocab(name), lengths=(7, 4, 5), seed=1, left=True)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=NEW_TOKENS,
                          do_sample=False, pad_token_id=0, eos_token_id=None).numpy()
    ours = np.asarray(generate(model, ids, mask, max_new_tokens=NEW_TOKENS, use_cache=use_cache))
    assert len(np.unique(ref[:, 7:])) >= 5, "reference output too repetitive to be a real check"
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("task", list(MISTRAL_HEADS))
def test_round_trip(tmp_path, task):
    auto = {"feature-extraction": transformers.AutoModel, "causal-lm": transformers.AutoModelForCausalLM,
            "sequence-classification": transformers.AutoModelForSequenceClassification}[task]
    for name in MISTRAL_CONFIGS:
        hf = hf_mistral(name, task, num_labels=3, pad_token_id=0)
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
        assert config["model_type"] == "mistral" and config["architectures"][0].startswith("Mistral")
        assert reloaded.config.sliding_window == hf.config.sliding_window  # None stays None (not HF's 4096)


def test_missing_sliding_window_takes_mistrals_default_and_llama_ignores_it():
    from jaxkernel.models.registry import family_for

    mistral = family_for("mistral", "config.json").config_from_hf(
        {"model_type": "mistral", "hidden_size": 32, "num_attention_heads": 8}, {})
    assert mistral.sliding_window == 4096 and mistral.num_key_value_heads == 8
    llama = family_for("llama", "config.json").config_from_hf(
        {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4, "sliding_window": 3}, {})
    assert llama.sliding_window is None


def test_lora_with_peft_defaults_both_ways(tmp_path):
    name, task = "m36-gqa3-window4", "causal-lm"
    hf = hf_mistral(name, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    apply_lora(ours, LoraConfig(r=4, alpha=8))
    randomise_trainable(ours, seed=1)
    jaxkernel.save_adapter(ours, tmp_path / "adapter")
    assert sorted(json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["target_modules"]) == ["q_proj", "v_proj"]
    loaded = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    ids, mask = padded_batch(vocab(name), lengths=(9, 6, 3))
    keep = mask.astype(bool)
    with torch.no_grad():
        theirs = torch_output(loaded(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)), task)
    assert np.abs(ours_output(ours, task, ids, mask)[keep] - theirs[keep]).max() <= ATOL

    again = ours_from_hf(hf_mistral(name, task), tmp_path / "base2", task)
    jaxkernel.load_adapter(again, tmp_path / "adapter")
    np.testing.assert_array_equal(ours_output(again, task, ids, mask), ours_output(ours, task, ids, mask))


@pytest.mark.parametrize("lengths", [(5, 3), (10, 6, 3)], ids=["inside-window", "past-window"])
def test_prefix_slides_out_of_the_window_like_peft(tmp_path, lengths):
    """PEFT's prefix is the first P cache slots: past the window HF stops seeing it, and so do we."""
    name, task = "m30-kv1-window7-tied", "causal-lm"
    hf = hf_mistral(name, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    apply_prefix_tuning(ours, PrefixConfig(num_virtual_tokens=3))
    randomise_trainable(ours, seed=5)
    jaxkernel.save_adapter(ours, tmp_path / "adapter")
    loaded = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    ids, mask = padded_batch(vocab(name), lengths=lengths)
    with torch.no_grad():
        theirs = torch_output(loaded(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)), task)
    keep = mask.astype(bool)
    diff = np.abs(ours_output(ours, task, ids, mask)[keep] - theirs[keep]).max()
    print(f"max|diff| = {diff:.1e}")
    assert diff <= ATOL
