"""PEFT adapter directories both ways, and merged export, against the installed peft/transformers."""

import json

import numpy as np
import peft
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import jaxkernel
from jaxkernel.hf.mapping import MappingError
from jaxkernel.hf.peft_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, peft_task_type
from jaxkernel.peft import LoraConfig, PrefixConfig, apply_lora, apply_prefix_tuning, lora_layers
from peft_helpers import (
    BERT_LORA_TARGETS, GPT2_LORA_TARGETS, PEFT_TASK, ours_from_hf, ours_output, peft_prefix_forward,
    randomise_trainable, torch_output,
)
from tiny_models import hf_bert, hf_gpt2, padded_batch

CASES = [("bert", "token-classification"), ("bert", "sequence-classification"), ("gpt2", "causal-lm")]
CASE_IDS = ["bert-token-cls", "bert-seq-cls", "gpt2-causal-lm"]
IDS, MASK = padded_batch(97, lengths=(9, 6, 3))  # right padding
AUTO = {
    "token-classification": transformers.AutoModelForTokenClassification,
    "sequence-classification": transformers.AutoModelForSequenceClassification,
    "causal-lm": transformers.AutoModelForCausalLM,
}
# Measured: max |ours - peft| over every comparison in this file is 4.8e-7 (float32, CPU; the README
# quotes it). 5e-6 leaves a 10x margin for other BLAS / XLA builds and still fails a real mismatch.
ATOL = 5e-6


def hf_model(family, task, seed=0):
    if family == "bert":
        return hf_bert("h36-heads3", task, num_labels=3, seed=seed)
    return hf_gpt2("e36-heads3", task, seed=seed)


def targets_for(family):
    return BERT_LORA_TARGETS if family == "bert" else GPT2_LORA_TARGETS


def compare(ours_logits, theirs_logits, family, task):
    """Max abs difference; GPT-2 pads sit at other positions in HF's forward, so real tokens only."""
    if family == "gpt2" and task == "causal-lm":
        keep = MASK.astype(bool)
        ours_logits, theirs_logits = ours_logits[keep], theirs_logits[keep]
    diff = float(np.abs(ours_logits - theirs_logits).max())
    assert diff <= ATOL, diff
    print(f"max|diff| = {diff:.2e}")
    return diff


def peft_lora_logits(peft_model, task):
    with torch.no_grad():
        return torch_output(peft_model(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK)), task)


def randomise_peft_heads(peft_model, seed):
    """PEFT's modules_to_save copies start equal to the base head; move them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "modules_to_save" in name:
                param.add_(torch.randn(param.shape, generator=gen) * 0.3)


# ---------------------------------------------------------------- LoRA


@pytest.mark.parametrize("family,task", CASES, ids=CASE_IDS)
def test_lora_export_loads_in_peft_with_the_same_logits(tmp_path, family, task):
    hf = hf_model(family, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    apply_lora(ours, LoraConfig(r=4, alpha=8, target_modules=targets_for(family)))
    randomise_trainable(ours, seed=1)
    jaxkernel.save_adapter(ours, tmp_path / "adapter")
    hf_config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    assert hf_config["task_type"] == PEFT_TASK[task] and hf_config["peft_type"] == "LORA"
    assert hf_config["fan_in_fan_out"] is (family == "gpt2")
    loaded = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    compare(ours_output(ours, task, IDS, MASK), peft_lora_logits(loaded, task), family, task)

    # Same key names and shapes as PEFT writes for the same configuration.
    loaded.save_pretrained(tmp_path / "resaved")
    ours_file = load_file(str(tmp_path / "adapter" / ADAPTER_WEIGHTS))
    theirs_file = load_file(str(tmp_path / "resaved" / ADAPTER_WEIGHTS))
    assert {k: v.shape for k, v in ours_file.items()} == {k: v.shape for k, v in theirs_file.items()}
    for key in theirs_file:
        np.testing.assert_array_equal(ours_file[key], theirs_file[key], err_msg=key)
    assert any(".lora_B.weight" in k for k in ours_file)
    if task != "causal-lm":
        assert "base_model.model.classifier.weight" in ours_file


@pytest.mark.parametrize("family,task", CASES, ids=CASE_IDS)
def test_lora_trained_in_peft_imports_with_the_same_logits(tmp_path, family, task):
    hf = hf_model(family, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    use_rslora = family == "gpt2"
    targets = targets_for(family) if family == "bert" else r".*\.(attn\.c_attn|mlp\.c_proj|mlp\.c_fc)"
    config = peft.LoraConfig(
        r=4, lora_alpha=6, target_modules=targets, task_type=PEFT_TASK[task], init_lora_weights=False,
        use_rslora=use_rslora,
    )
    torch.manual_seed(2)
    trained = peft.get_peft_model(hf, config).eval()
    randomise_peft_heads(trained, seed=3)
    trained.save_pretrained(tmp_path / "adapter")
    jaxkernel.load_adapter(ours, tmp_path / "adapter")
    assert len(lora_layers(ours)) == (6 if family == "bert" else 3) * 2
    assert ours.peft_config.use_rslora is use_rslora
    compare(ours_output(ours, task, IDS, MASK), peft_lora_logits(trained, task), family, task)


@pytest.mark.parametrize("family,task", CASES, ids=CASE_IDS)
def test_merged_export_loads_in_plain_transformers(tmp_path, family, task):
    hf = hf_model(family, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    apply_lora(ours, LoraConfig(r=4, alpha=8, target_modules=targets_for(family)))
    randomise_trainable(ours, seed=4)
    expected = ours_output(ours, task, IDS, MASK)
    jaxkernel.save_merged(ours, tmp_path / "merged")
    merged, info = AUTO[task].from_pretrained(tmp_path / "merged", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        logits = torch_output(merged.eval()(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK)), task)
    compare(expected, logits, family, task)
    # The model we exported from still carries its (unmerged) adapter.
    assert lora_layers(ours) and not any(layer.merged for layer in lora_layers(ours).values())
    np.testing.assert_array_equal(ours_output(ours, task, IDS, MASK), expected)


# ---------------------------------------------------------------- prefix tuning


def peft_prefix_logits(peft_model, family, task):
    if family == "gpt2":  # PEFT's own forward works for GPT-2 causal LM...
        with torch.no_grad():
            out = peft_model(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK))
    else:  # ...and not for BERT in transformers 5.24 (see peft_prefix_forward)
        out = peft_prefix_forward(peft_model, IDS, MASK)
    return torch_output(out, task)


@pytest.mark.parametrize("projection", [False, True], ids=["flat", "projection"])
@pytest.mark.parametrize("family,task", CASES, ids=CASE_IDS)
def test_prefix_export_loads_in_peft_with_the_same_logits(tmp_path, family, task, projection):
    hf = hf_model(family, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    apply_prefix_tuning(ours, PrefixConfig(num_virtual_tokens=5, prefix_projection=projection, encoder_hidden_size=16))
    randomise_trainable(ours, seed=5)
    jaxkernel.save_adapter(ours, tmp_path / "adapter")
    hf_config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    assert hf_config["task_type"] == PEFT_TASK[task] and hf_config["peft_type"] == "PREFIX_TUNING"
    tensors = load_file(str(tmp_path / "adapter" / ADAPTER_WEIGHTS))
    assert tensors["prompt_embeddings"].shape == (5, 2 * 2 * 36)
    if task != "causal-lm":
        assert set(tensors) == {"prompt_embeddings", "base_model.classifier.weight", "base_model.classifier.bias"}
    loaded = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    compare(ours_output(ours, task, IDS, MASK), peft_prefix_logits(loaded, family, task), family, task)


@pytest.mark.parametrize("projection", [False, True], ids=["flat", "projection"])
@pytest.mark.parametrize("family,task", CASES, ids=CASE_IDS)
def test_prefix_trained_in_peft_imports_with_the_same_logits(tmp_path, family, task, projection):
    hf = hf_model(family, task)
    ours = ours_from_hf(hf, tmp_path / "base", task)
    torch.manual_seed(6)
    config = peft.PrefixTuningConfig(
        num_virtual_tokens=5, task_type=PEFT_TASK[task], prefix_projection=projection, encoder_hidden_size=16,
    )
    trained = peft.get_peft_model(hf, config).eval()
    with torch.no_grad():
        trained.prompt_encoder["default"].embedding.weight.mul_(0.5)
    randomise_peft_heads(trained, seed=7)
    expected = peft_prefix_logits(trained, family, task)
    trained.save_pretrained(tmp_path / "adapter")
    jaxkernel.load_adapter(ours, tmp_path / "adapter")
    assert ours.peft_config.num_virtual_tokens == 5
    compare(ours_output(ours, task, IDS, MASK), expected, family, task)


# ---------------------------------------------------------------- task types and errors


def test_task_type_follows_the_model():
    from jaxkernel.models.bert import BERT_TASKS
    from tiny_models import BERT_CONFIGS

    config = jaxkernel.BertConfig(**BERT_CONFIGS["h36-heads3"])
    from flax import nnx

    got = {task: peft_task_type(cls(config, rngs=nnx.Rngs(0))) for task, cls in BERT_TASKS.items()}
    assert got == {
        "feature-extraction": "FEATURE_EXTRACTION", "sequence-classification": "SEQ_CLS",
        "token-classification": "TOKEN_CLS", "question-answering": "QUESTION_ANS", "masked-lm": None,
    }


@pytest.fixture
def bert_adapter(tmp_path):
    """A LoRA adapter directory trained in PEFT on the h36 BERT, plus a fresh base for it."""
    hf = hf_bert("h36-heads3", "token-classification", num_labels=3)
    ours = ours_from_hf(hf, tmp_path / "base", "token-classification")
    peft.get_peft_model(hf, peft.LoraConfig(r=2, target_modules=["query"], task_type="TOKEN_CLS")).save_pretrained(
        tmp_path / "adapter"
    )
    return tmp_path / "adapter", ours


def _edit_config(directory, **changes):
    config = json.loads((directory / ADAPTER_CONFIG).read_text())
    config.update(changes)
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config))


def test_adapter_for_another_base_is_refused(tmp_path, bert_adapter):
    adapter, _ = bert_adapter
    other = ours_from_hf(hf_bert("h24-heads2-relu", "token-classification", num_labels=3), tmp_path / "o", "token-classification")
    with pytest.raises(MappingError, match=r"lora_A.weight.*has shape \(2, 36\).*expects \(2, 24\).*different base model"):
        jaxkernel.load_adapter(other, adapter)


def test_unsupported_adapter_options_are_refused(bert_adapter):
    adapter, ours = bert_adapter
    _edit_config(adapter, lora_bias=True)
    with pytest.raises(ValueError, match="lora_bias=True is not supported"):
        jaxkernel.load_adapter(ours, adapter)
    _edit_config(adapter, lora_bias=False, peft_type="LOHA")
    with pytest.raises(ValueError, match="peft_type 'LOHA' is not supported; jaxkernel reads LORA, ADALORA, IA3 and PREFIX"):
        jaxkernel.load_adapter(ours, adapter)


def test_adapter_with_extra_or_missing_tensors_is_refused(bert_adapter):
    adapter, ours = bert_adapter
    tensors = load_file(str(adapter / ADAPTER_WEIGHTS))
    save_file({**tensors, "base_model.model.bert.pooler.dense.lora_A.weight": np.zeros((2, 36), np.float32)},
              str(adapter / ADAPTER_WEIGHTS))
    with pytest.raises(MappingError, match="fit no module.*pooler"):
        jaxkernel.load_adapter(ours, adapter)
    del tensors["base_model.model.bert.encoder.layer.1.attention.self.query.lora_B.weight"]
    save_file(tensors, str(adapter / ADAPTER_WEIGHTS))
    with pytest.raises(MappingError, match="lacks 'bert.encoder.layer.1.attention.self.query.lora_B.weight'"):
        jaxkernel.load_adapter(ours_from_hf(hf_bert("h36-heads3", "token-classification", num_labels=3),
                                            adapter.parent / "b2", "token-classification"), adapter)


def test_prefix_for_another_shape_and_missing_files_are_refused(tmp_path):
    hf = hf_gpt2("e36-heads3", "causal-lm")
    peft.get_peft_model(hf, peft.PrefixTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM")).save_pretrained(
        tmp_path / "adapter"
    )
    other = ours_from_hf(hf_gpt2("e24-heads2-inner", "causal-lm"), tmp_path / "other", "causal-lm")
    with pytest.raises(ValueError, match="num_layers=2 but the model has 3.*different base model"):
        jaxkernel.load_adapter(other, tmp_path / "adapter")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        jaxkernel.load_adapter(other, tmp_path / "other")


def test_export_without_adapter_and_merging_a_prefix_are_refused(tmp_path):
    model = ours_from_hf(hf_gpt2("e36-heads3", "causal-lm"), tmp_path / "base", "causal-lm")
    with pytest.raises(ValueError, match="carries no adapter"):
        jaxkernel.save_adapter(model, tmp_path / "a")
    apply_prefix_tuning(model, PrefixConfig(num_virtual_tokens=2))
    with pytest.raises(ValueError, match="prefix-tuning adapter cannot be folded"):
        jaxkernel.save_merged(model, tmp_path / "m")
