"""Strict checkpoint reading (issue 13 §2): every config.json key is handled, ignored with a
reason, or refused, and an unknown one is named (an error with strict=True); every checkpoint
tensor is consumed, a known buffer, or another head's weights — anything else is an error."""

import dataclasses
import json
import logging

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import jaxkernel
from jaxkernel.config import ModelConfig, load_config
from jaxkernel.hf.family import COMMON_IGNORED, COMMON_REFUSED
from jaxkernel.hf.mapping import MappingError
from jaxkernel.models.registry import families
from tiny_models import hf_bert, hf_gpt2

SIZES = dict(vocab_size=53, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24)
# A tiny seeded HF model per family, saved by transformers itself: its config.json is the real thing.
HF_MODELS = {
    "bert": lambda: transformers.BertForTokenClassification(transformers.BertConfig(**SIZES, num_labels=3)),
    "gpt2": lambda: transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=53, n_embd=16, n_layer=1, n_head=2, n_positions=32, bos_token_id=1,
                                eos_token_id=2)),
    "roberta": lambda: transformers.RobertaForSequenceClassification(
        transformers.RobertaConfig(**SIZES, max_position_embeddings=34, num_labels=3)),
    "xlm-roberta": lambda: transformers.XLMRobertaForMaskedLM(
        transformers.XLMRobertaConfig(**SIZES, max_position_embeddings=34)),
    "llama": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(**SIZES, num_key_value_heads=1, max_position_embeddings=32)),
    "mistral": lambda: transformers.MistralForSequenceClassification(
        transformers.MistralConfig(**SIZES, num_key_value_heads=1, max_position_embeddings=32, sliding_window=4,
                                   pad_token_id=0, num_labels=3)),
}
LOG = "jaxkernel"


def save_hf(model_type, directory):
    torch.manual_seed(0)
    HF_MODELS[model_type]().save_pretrained(directory)
    return directory


def edit_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def config_keys(model_type):
    return families()[model_type].extra["config_keys"]


@pytest.mark.parametrize("model_type", sorted(HF_MODELS))
def test_configs_written_by_transformers_load_strictly_without_warnings(model_type, tmp_path, caplog):
    save_hf(model_type, tmp_path)
    with caplog.at_level(logging.WARNING, logger=LOG):
        jaxkernel.from_pretrained(tmp_path, strict=True)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    # Every key a PretrainedConfig of this type can write (to_dict, not only the diff save_pretrained writes).
    full = transformers.AutoConfig.from_pretrained(tmp_path).to_dict()
    assert config_keys(model_type).unknown(full) == []


def test_packaged_minilm_config_written_by_transformers_4_has_no_unknown_key(minilm_dir):
    hf = json.loads((minilm_dir / "config.json").read_text())
    assert hf["transformers_version"].startswith("4.") and config_keys("bert").unknown(hf) == []


@pytest.mark.parametrize("model_type", sorted(families()))
def test_every_key_is_classified_once_with_a_reason(model_type):
    family = families()[model_type]
    keys = family.extra["config_keys"]
    # every config field is read, or ignored with a reason where this model type has no such option
    fields = {f.name for f in dataclasses.fields(family.config_class)} - {"labels", "dtype"}
    assert fields <= keys.handled | set(keys.ignored), fields - keys.handled - set(keys.ignored)
    assert not keys.handled & (set(keys.ignored) | set(keys.refused))
    assert not set(keys.ignored) & set(keys.refused)
    assert all(len(reason) > 20 for reason in keys.ignored.values())
    # the keys every PretrainedConfig writes are classified for every family
    assert set(COMMON_IGNORED) | set(COMMON_REFUSED) <= keys.handled | set(keys.ignored) | set(keys.refused)


def test_unknown_key_is_named_in_a_warning_and_is_an_error_when_strict(tmp_path, caplog):
    save_hf("bert", tmp_path)
    edit_config(tmp_path, attention_sink_tokens=4)
    with caplog.at_level(logging.WARNING, logger=LOG):
        jaxkernel.from_pretrained(tmp_path)
    assert "attention_sink_tokens" in caplog.text and "strict=True" in caplog.text
    with pytest.raises(ValueError, match=r"config.json: jaxkernel does not know the config key\(s\) attention_sink_tokens"):
        jaxkernel.from_pretrained(tmp_path, strict=True)


def test_run_config_model_strict_reaches_the_loader(tmp_path):
    from jaxkernel.config import Config
    from jaxkernel.train.build import build_model

    save_hf("gpt2", tmp_path)
    edit_config(tmp_path, sliding_window=8)
    config = Config(model=ModelConfig(path=str(tmp_path), task="causal-lm", strict=True))
    with pytest.raises(ValueError, match="sliding_window"):
        build_model(config)
    assert load_config(overrides=["model.strict=true"]).model.strict is True and ModelConfig().strict is False


@pytest.mark.parametrize(
    "change, message",
    [
        ({"problem_type": "regression"}, "problem_type='regression'"),
        ({"quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": True}}, "quantization_config="),
        ({"auto_map": {"AutoModel": "modeling_custom.CustomBert"}}, "auto_map="),
        ({"is_encoder_decoder": True}, "is_encoder_decoder=True"),
        ({"tie_word_embeddings": False}, "tie_word_embeddings=False"),
    ],
)
def test_refused_values_are_errors_even_without_strict(tmp_path, change, message):
    save_hf("bert", tmp_path)
    edit_config(tmp_path, **change)
    with pytest.raises(ValueError, match=message):
        jaxkernel.from_pretrained(tmp_path)


def test_ignored_keys_stay_silent(tmp_path, caplog):
    save_hf("gpt2", tmp_path)
    edit_config(tmp_path, n_ctx=32, summary_type="cls_index", reorder_and_upcast_attn=True, torch_dtype="float32",
                chunk_size_feed_forward=4, output_hidden_states=True, problem_type="single_label_classification")
    with caplog.at_level(logging.WARNING, logger=LOG):
        jaxkernel.from_pretrained(tmp_path, strict=True)
    assert not caplog.records, caplog.text


def _rewrite(directory, change):
    tensors = load_file(str(directory / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


def test_tensor_no_row_consumes_is_an_error_naming_it(tmp_path):
    save_hf("bert", tmp_path)
    _rewrite(tmp_path, lambda t: t.update({"bert.encoder.layer.0.attention.self.rel_bias": np.zeros(4, np.float32)}))
    with pytest.raises(MappingError, match=r"1 tensor\(s\) that no rule.*layer\.0\.attention\.self\.rel_bias"):
        jaxkernel.from_pretrained(tmp_path)


def test_other_heads_weights_are_reported_by_head_not_refused(tmp_path, caplog):
    hf_bert("h36-heads3", "masked-lm").save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger=LOG):
        jaxkernel.from_pretrained(tmp_path, task="token-classification", num_labels=3)
    unused = [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage()]
    assert len(unused) == 1 and "the masked-lm head (BertForMaskedLM)" in unused[0], caplog.text
    assert "cls.predictions.transform.dense.weight" in unused[0] and "cls.predictions.bias" in unused[0]

    # A head jaxkernel has no task for (BertForPreTraining's next-sentence head) is named too.
    caplog.clear()
    hf = transformers.BertForPreTraining(transformers.BertConfig(**SIZES))
    hf.save_pretrained(tmp_path / "pretraining")
    with caplog.at_level(logging.WARNING, logger=LOG):
        jaxkernel.from_pretrained(tmp_path / "pretraining", task="masked-lm")
    assert "next-sentence head: cls.seq_relationship.bias, cls.seq_relationship.weight" in caplog.text


def test_bare_model_reports_pooler_and_classifier_of_other_heads(tmp_path, caplog):
    hf_gpt2("e36-heads3", "sequence-classification").save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger=LOG):
        jaxkernel.from_pretrained(tmp_path, task="feature-extraction")
    assert "the sequence-classification head (GPT2ForSequenceClassification): score.weight" in caplog.text


def test_llama_reads_no_sliding_window_and_says_so(tmp_path, caplog):
    save_hf("llama", tmp_path)
    edit_config(tmp_path, sliding_window=4, pretraining_tp=2)  # HF's LlamaModel reads neither
    with caplog.at_level(logging.WARNING, logger=LOG):
        model = jaxkernel.from_pretrained(tmp_path, strict=True)
    assert not caplog.records and model.config.sliding_window is None
    assert "only mistral" in config_keys("llama").ignored["sliding_window"]
    assert "sliding_window" in config_keys("mistral").handled
