"""Bad checkpoints fail with errors that name the file/key and what was expected."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import jaxkernel
from jaxkernel.hf.mapping import MappingError
from tiny_models import hf_bert, hf_gpt2, padded_batch


@pytest.fixture
def bert_dir(tmp_path):
    hf_bert("h36-heads3", "token-classification", num_labels=7).save_pretrained(tmp_path)
    return tmp_path


def edit_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def test_missing_directory_and_files(tmp_path, bert_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        jaxkernel.from_pretrained(tmp_path / "nope" / "model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        jaxkernel.from_pretrained(tmp_path / "empty")
    (bert_dir / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no weights in .*model.safetensors"):
        jaxkernel.from_pretrained(bert_dir)


def test_unsupported_model_type(bert_dir):
    edit_config(bert_dir, model_type="t5")
    with pytest.raises(ValueError, match=r"config.json: model_type 't5' is not supported"):
        jaxkernel.from_pretrained(bert_dir)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key'"),
        ({"is_decoder": True}, "is_decoder=True"),
        ({"hidden_act": "mish"}, "hidden_act='mish'"),
    ],
)
def test_config_values_we_do_not_implement(bert_dir, change, message):
    edit_config(bert_dir, **change)
    with pytest.raises(ValueError, match=message):
        jaxkernel.from_pretrained(bert_dir)


def test_gpt2_config_values_we_do_not_implement(tmp_path):
    hf_gpt2("e36-heads3", "causal-lm").save_pretrained(tmp_path)
    edit_config(tmp_path, scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx=True"):
        jaxkernel.from_pretrained(tmp_path)


def test_wrong_shape_names_tensor_file_and_expectation(bert_dir):
    tensors = load_file(str(bert_dir / "model.safetensors"))
    key = "bert.encoder.layer.1.intermediate.dense.weight"
    tensors[key] = np.zeros((51, 36), np.float32)
    save_file(tensors, str(bert_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MappingError, match=r"intermediate\.dense\.weight.*model\.safetensors.*\(51, 36\).*\(36, 50\)"):
        jaxkernel.from_pretrained(bert_dir)


def test_missing_tensor_is_named(bert_dir):
    tensors = load_file(str(bert_dir / "model.safetensors"))
    del tensors["bert.encoder.layer.0.attention.self.key.bias"]
    save_file(tensors, str(bert_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MappingError, match=r"lacks 1 tensor.*layer\.0\.attention\.self\.key\.bias"):
        jaxkernel.from_pretrained(bert_dir)


def test_qa_head_needs_two_labels(bert_dir):
    with pytest.raises(ValueError, match="num_labels must be 2"):
        jaxkernel.from_pretrained(bert_dir, task="question-answering", num_labels=3)


def test_unknown_task(bert_dir):
    with pytest.raises(ValueError, match="task 'causal-lm' is not available for bert"):
        jaxkernel.from_pretrained(bert_dir, task="causal-lm")


def test_pytorch_bin_is_read_with_weights_only(tmp_path):
    hf = hf_bert("h36-heads3", "sequence-classification")
    hf.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    model = jaxkernel.from_pretrained(tmp_path)
    ids, mask = padded_batch(97)
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_allclose(np.asarray(model(ids, mask)), ref, atol=1e-5)


def test_untied_lm_head_is_refused(tmp_path):
    hf_gpt2("e36-heads3", "causal-lm").save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"] + 1.0
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MappingError, match="lm_head.weight differs"):
        jaxkernel.from_pretrained(tmp_path)


def test_export_refuses_int8_and_adapter_models_instead_of_dropping_weights(tmp_path):
    from jaxkernel.peft import LoraConfig, apply_lora
    from jaxkernel.quant.transform import quantize_model

    hf_bert("h36-heads3", "sequence-classification").save_pretrained(tmp_path / "src")
    quantized = quantize_model(jaxkernel.from_pretrained(tmp_path / "src"))
    with pytest.raises(TypeError, match=r"Int8Weight.*dequantize_model"):
        jaxkernel.save_pretrained(quantized, tmp_path / "int8")
    adapted = apply_lora(jaxkernel.from_pretrained(tmp_path / "src"), LoraConfig(target_modules=["query"]))
    with pytest.raises(TypeError, match=r"lora_A.*save_merged"):
        jaxkernel.save_pretrained(adapted, tmp_path / "lora")
    assert not (tmp_path / "int8").exists() and not (tmp_path / "lora").exists()
