"""RoBERTa / XLM-R adapters exchanged with ``peft`` both ways (LoRA, prefix, IA3), and merged export."""

import json

import numpy as np
import peft
import pytest
import torch
import transformers
from safetensors.numpy import load_file

import jaxkernel
from jaxkernel.hf.peft_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from jaxkernel.peft import Ia3Config, LoraConfig, PrefixConfig, apply_ia3, apply_lora, apply_prefix_tuning, lora_layers
from peft_helpers import (
    BERT_LORA_TARGETS, PEFT_TASK, lora_paths, ours_from_hf, ours_output, peft_lora_paths, peft_prefix_forward,
    randomise_trainable, torch_output,
)
from roberta_tiny import first_config, hf_roberta, roberta_batch

ATOL = 1e-5
CASES = [
    ("roberta", "token-classification"),
    ("roberta", "sequence-classification"),
    ("xlm-roberta", "sequence-classification"),
    ("xlm-roberta", "question-answering"),
]
CASE_IDS = [f"{m}-{t}" for m, t in CASES]
AUTO = {
    "token-classification": transformers.AutoModelForTokenClassification,
    "sequence-classification": transformers.AutoModelForSequenceClassification,
    "question-answering": transformers.AutoModelForQuestionAnswering,
}


def hf_model(model_type, task, seed=0):
    num_labels = 2 if task == "question-answering" else 3
    return hf_roberta(model_type, first_config(model_type), task, num_labels=num_labels, seed=seed)


def batch(model_type):
    return roberta_batch(model_type, first_config(model_type), lengths=(9, 6, 3))


def compare(ours, theirs, what):
    diff = float(np.abs(ours - theirs).max())
    print(f"{what}: max|diff| = {diff:.2e}")
    assert diff <= ATOL, diff


def peft_logits(peft_model, task, ids, mask):
    with torch.no_grad():
        return torch_output(peft_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)), task)


def randomise_peft_heads(peft_model, seed):
    """PEFT's modules_to_save copies start equal to the base head; move them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "modules_to_save" in name:
                param.add_(torch.randn(param.shape, generator=gen) * 0.3)


# ---------------------------------------------------------------- LoRA


@pytest.mark.parametrize("model_type,task", CASES, ids=CASE_IDS)
def test_lora_export_loads_in_peft_with_the_same_logits(tmp_path, model_type, task):
    hf = hf_model(model_type, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    ids, mask = batch(model_type)
    apply_lora(ours, LoraConfig(r=4, alpha=8, target_modules=BERT_LORA_TARGETS))
    randomise_trainable(ours, seed=1)
    jaxkernel.save_adapter(ours, tmp_path / "adapter")
    hf_config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    assert hf_config["task_type"] == PEFT_TASK[task] and hf_config["fan_in_fan_out"] is False
    loaded = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    compare(ours_output(ours, task, ids, mask), peft_logits(loaded, task, ids, mask), f"LoRA export {model_type} {task}")

    loaded.save_pretrained(tmp_path / "resaved")  # same keys, shapes and values as PEFT writes
    ours_file = load_file(str(tmp_path / "adapter" / ADAPTER_WEIGHTS))
    theirs_file = load_file(str(tmp_path / "resaved" / ADAPTER_WEIGHTS))
    assert {k: v.shape for k, v in ours_file.items()} == {k: v.shape for k, v in theirs_file.items()}
    for key in theirs_file:
        np.testing.assert_array_equal(ours_file[key], theirs_file[key], err_msg=key)
    if task == "sequence-classification":  # RoBERTa's two-layer head is saved whole
        assert {"base_model.model.classifier.dense.weight", "base_model.model.classifier.out_proj.bias"} <= set(ours_file)


@pytest.mark.parametrize("model_type,task", CASES, ids=CASE_IDS)
def test_lora_trained_in_peft_imports_with_the_same_logits(tmp_path, model_type, task):
    hf = hf_model(model_type, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    ids, mask = batch(model_type)
    config = peft.LoraConfig(r=4, lora_alpha=6, target_modules=BERT_LORA_TARGETS, task_type=PEFT_TASK[task],
                             init_lora_weights=False)
    torch.manual_seed(2)
    trained = peft.get_peft_model(hf, config).eval()
    randomise_peft_heads(trained, seed=3)
    trained.save_pretrained(tmp_path / "adapter")
    jaxkernel.load_adapter(ours, tmp_path / "adapter")
    assert len(lora_layers(ours)) == 6 * ours.config.num_hidden_layers
    compare(ours_output(ours, task, ids, mask), peft_logits(trained, task, ids, mask), f"LoRA import {model_type} {task}")


@pytest.mark.parametrize("model_type,task", CASES, ids=CASE_IDS)
def test_merged_export_loads_in_plain_transformers(tmp_path, model_type, task):
    ours = ours_from_hf(hf_model(model_type, task), tmp_path / "base", task)
    ids, mask = batch(model_type)
    apply_lora(ours, LoraConfig(r=4, alpha=8))  # PEFT's roberta defaults: query, value
    randomise_trainable(ours, seed=4)
    expected = ours_output(ours, task, ids, mask)
    jaxkernel.save_merged(ours, tmp_path / "merged")
    merged, info = AUTO[task].from_pretrained(tmp_path / "merged", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert merged.config.model_type == model_type
    with torch.no_grad():
        logits = torch_output(merged.eval()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)), task)
    compare(expected, logits, f"merged {model_type} {task}")


def test_default_lora_and_ia3_targets_are_peft_defaults(tmp_path):
    for model_type in ("roberta", "xlm-roberta"):
        hf = hf_model(model_type, "token-classification")
        ours = ours_from_hf(hf, tmp_path / model_type, "token-classification")
        apply_lora(ours, LoraConfig(r=2))
        wrapped = peft.get_peft_model(hf_model(model_type, "token-classification"), peft.LoraConfig(r=2))
        assert lora_paths(ours) == peft_lora_paths(wrapped)
        assert lora_paths(ours)[-1].endswith("attention.self.value")


@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta"])
def test_ia3_defaults_export_to_peft(tmp_path, model_type):
    from peft.tuners.ia3 import IA3Layer

    task = "token-classification"
    hf = hf_model(model_type, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    ids, mask = batch(model_type)
    apply_ia3(ours, Ia3Config())
    # PEFT 0.21 has IA3 defaults for roberta only; jaxkernel gives xlm-roberta the same ones.
    explicit = {} if model_type == "roberta" else dict(target_modules=["key", "value", "output.dense"],
                                                       feedforward_modules=["output.dense"])
    reference = peft.get_peft_model(hf_model(model_type, task), peft.IA3Config(task_type="TOKEN_CLS", **explicit))
    theirs = {n.removeprefix("base_model.model."): m.is_feedforward for n, m in reference.named_modules()
              if isinstance(m, IA3Layer)}
    from jaxkernel.peft import ia3_layers

    assert {p: layer.is_feedforward for p, layer in ia3_layers(ours).items()} == theirs
    randomise_trainable(ours, seed=8)
    jaxkernel.save_adapter(ours, tmp_path / "adapter")
    loaded = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    compare(ours_output(ours, task, ids, mask), peft_logits(loaded, task, ids, mask), f"IA3 export {model_type}")


# ---------------------------------------------------------------- prefix tuning


@pytest.mark.parametrize("projection", [False, True], ids=["flat", "projection"])
@pytest.mark.parametrize("model_type,task", CASES, ids=CASE_IDS)
def test_prefix_export_loads_in_peft_with_the_same_logits(tmp_path, model_type, task, projection):
    hf = hf_model(model_type, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    ids, mask = batch(model_type)
    apply_prefix_tuning(ours, PrefixConfig(num_virtual_tokens=5, prefix_projection=projection, encoder_hidden_size=16))
    randomise_trainable(ours, seed=5)
    jaxkernel.save_adapter(ours, tmp_path / "adapter")
    hf_config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    assert hf_config["peft_type"] == "PREFIX_TUNING" and hf_config["task_type"] == PEFT_TASK[task]
    loaded = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    theirs = torch_output(peft_prefix_forward(loaded, ids, mask), task)
    compare(ours_output(ours, task, ids, mask), theirs, f"prefix export {model_type} {task} projection={projection}")


@pytest.mark.parametrize("model_type,task", CASES, ids=CASE_IDS)
def test_prefix_trained_in_peft_imports_with_the_same_logits(tmp_path, model_type, task):
    hf = hf_model(model_type, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    ids, mask = batch(model_type)
    torch.manual_seed(6)
    config = peft.PrefixTuningConfig(num_virtual_tokens=5, task_type=PEFT_TASK[task], prefix_projection=True,
                                     encoder_hidden_size=16)
    trained = peft.get_peft_model(hf, config).eval()
    with torch.no_grad():
        trained.prompt_encoder["default"].embedding.weight.mul_(0.5)
    randomise_peft_heads(trained, seed=7)
    expected = torch_output(peft_prefix_forward(trained, ids, mask), task)
    trained.save_pretrained(tmp_path / "adapter")
    jaxkernel.load_adapter(ours, tmp_path / "adapter")
    compare(ours_output(ours, task, ids, mask), expected, f"prefix import {model_type} {task}")


def test_prefix_leaves_room_for_roberta_positions(tmp_path):
    """A prefix uses positions after pad_token_id + 1: 40 embeddings number 38 prefix + real tokens."""
    task = "token-classification"
    ours = ours_from_hf(hf_model("roberta", task), tmp_path / "base", task)
    apply_prefix_tuning(ours, PrefixConfig(num_virtual_tokens=30))
    ids, mask = roberta_batch("roberta", first_config("roberta"), lengths=(9, 8))
    with pytest.raises(ValueError, match=r"9 tokens after a prefix of 30 exceed max_position_embeddings=40 \(38 usable\)"):
        ours(ids, mask)
    assert ours(ids[:, :8], mask[:, :8]).shape == (2, 8, 3)
