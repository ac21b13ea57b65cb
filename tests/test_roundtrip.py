"""HF dir -> jaxkernel -> HF dir gives bit-identical tensors that transformers loads cleanly."""

import json

import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file

import jaxkernel
from jaxkernel.cli import main as cli_main
from jaxkernel.hf.io import read_weights
from tiny_models import BERT_HEADS, GPT2_HEADS, hf_bert, hf_gpt2

AUTO = {
    "feature-extraction": transformers.AutoModel,
    "sequence-classification": transformers.AutoModelForSequenceClassification,
    "token-classification": transformers.AutoModelForTokenClassification,
    "question-answering": transformers.AutoModelForQuestionAnswering,
    "masked-lm": transformers.AutoModelForMaskedLM,
    "causal-lm": transformers.AutoModelForCausalLM,
}


def assert_round_trip(src, out):
    model = jaxkernel.from_pretrained(src)
    jaxkernel.save_pretrained(model, out)
    original, _ = read_weights(src)
    exported, _ = read_weights(out)
    assert sorted(exported) == sorted(original)
    for key in original:
        assert exported[key].dtype == original[key].dtype, key
        np.testing.assert_array_equal(exported[key], original[key], err_msg=key)
    reloaded, info = AUTO[model.task].from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert type(reloaded).__name__ == json.loads((out / "config.json").read_text())["architectures"][0]
    return model, reloaded


@pytest.mark.parametrize("task", list(BERT_HEADS))
def test_bert_round_trip(tmp_path, task):
    num_labels = 2 if task == "question-answering" else 5  # HF QA heads are start/end
    hf = hf_bert("h24-heads2-relu", task, num_labels=num_labels)
    hf.save_pretrained(tmp_path / "src")
    model, reloaded = assert_round_trip(tmp_path / "src", tmp_path / "out")
    assert reloaded.config.hidden_act == "relu" and reloaded.config.num_labels == num_labels


@pytest.mark.parametrize("task", list(GPT2_HEADS))
def test_gpt2_round_trip(tmp_path, task):
    hf_gpt2("e24-heads2-inner", task, num_labels=3, pad_token_id=0).save_pretrained(tmp_path / "src")
    _, reloaded = assert_round_trip(tmp_path / "src", tmp_path / "out")
    assert reloaded.config.n_inner == 50


def test_real_minilm_round_trip_with_tokenizer(minilm_dir, tmp_path):
    model = jaxkernel.from_pretrained(minilm_dir)
    jaxkernel.save_pretrained(model, tmp_path, tokenizer_from=minilm_dir)
    original = load_file(str(minilm_dir / "model.safetensors"))
    exported = load_file(str(tmp_path / "model.safetensors"))
    kept = {k: v for k, v in original.items() if not k.endswith("position_ids")}
    assert sorted(exported) == sorted(kept)
    for key, value in kept.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer("hello world")["input_ids"] == [101, 7592, 2088, 102]


def test_sharded_export_loads_in_transformers(tmp_path):
    hf_gpt2("e36-heads3", "causal-lm").save_pretrained(tmp_path / "src")
    model = jaxkernel.from_pretrained(tmp_path / "src")
    jaxkernel.save_pretrained(model, tmp_path / "out", max_shard_size="20KB")
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert not (tmp_path / "out" / "model.safetensors").exists()
    again = jaxkernel.from_pretrained(tmp_path / "out")  # we read our own shards too
    np.testing.assert_array_equal(
        np.asarray(again.transformer.wte.embedding[...]), np.asarray(model.transformer.wte.embedding[...])
    )
    _, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_cli_convert_round_trips(tmp_path, capsys):
    hf_bert("h36-heads3", "token-classification", num_labels=7).save_pretrained(tmp_path / "src")
    assert cli_main(["convert", str(tmp_path / "src"), str(tmp_path / "out")]) == 0
    assert "BertForTokenClassification" in capsys.readouterr().out
    original, _ = read_weights(tmp_path / "src")
    exported, _ = read_weights(tmp_path / "out")
    for key in original:
        np.testing.assert_array_equal(exported[key], original[key])
