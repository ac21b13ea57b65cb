"""RoBERTa / XLM-R: HF dir -> jaxkernel -> HF dir is bit-identical and loads cleanly; configs refused with reasons."""

import json

import numpy as np
import pytest
import transformers

import jaxkernel
from jaxkernel.hf.io import read_weights
from jaxkernel.models.registry import family_of
from roberta_tiny import HF_HEADS, TASKS, first_config, hf_roberta, roberta_batch

AUTO = {
    "feature-extraction": transformers.AutoModel,
    "sequence-classification": transformers.AutoModelForSequenceClassification,
    "token-classification": transformers.AutoModelForTokenClassification,
    "question-answering": transformers.AutoModelForQuestionAnswering,
    "masked-lm": transformers.AutoModelForMaskedLM,
}


@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta"])
@pytest.mark.parametrize("task", TASKS)
def test_round_trip_is_bit_identical_and_loads(tmp_path, model_type, task):
    num_labels = 2 if task == "question-answering" else 5
    name = "h24-heads2-relu" if model_type == "roberta" else "h28-heads7-silu"
    hf_roberta(model_type, name, task, num_labels=num_labels, seed=11).save_pretrained(tmp_path / "src")
    model = jaxkernel.from_pretrained(tmp_path / "src")
    jaxkernel.save_pretrained(model, tmp_path / "out")

    original, _ = read_weights(tmp_path / "src")
    exported, _ = read_weights(tmp_path / "out")
    assert sorted(exported) == sorted(original)
    for key in original:
        assert exported[key].dtype == original[key].dtype, key
        np.testing.assert_array_equal(exported[key], original[key], err_msg=key)

    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["model_type"] == model_type
    assert written["architectures"] == [HF_HEADS[model_type][task].__name__]
    reloaded, info = AUTO[task].from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert type(reloaded) is HF_HEADS[model_type][task]
    assert reloaded.config.pad_token_id == 1 and reloaded.config.num_labels == num_labels

    again = jaxkernel.from_pretrained(tmp_path / "out")
    ids, mask = roberta_batch(model_type, name)
    hidden = [np.asarray(family_of(m).base_model(m)(ids, mask).last_hidden_state) for m in (model, again)]
    np.testing.assert_array_equal(hidden[1], hidden[0])


def test_base_checkpoint_gets_fresh_heads(tmp_path, caplog):
    hf_roberta("roberta", first_config("roberta"), "masked-lm").save_pretrained(tmp_path)
    with caplog.at_level("WARNING"):
        model = jaxkernel.from_pretrained(tmp_path, task="sequence-classification", num_labels=3)
    assert "classifier.dense.kernel" in caplog.text and "classifier.out_proj.kernel" in caplog.text
    assert "lm_head" in caplog.text  # reported as unused
    ids, mask = roberta_batch("roberta", first_config("roberta"))
    assert model(ids, mask).shape == (3, 3)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key' is not supported"),
        ({"is_decoder": True}, "is_decoder=True is not supported"),
        ({"add_cross_attention": True}, "add_cross_attention=True is not supported"),
        ({"tie_word_embeddings": False}, "tie_word_embeddings=False is not supported"),
        ({"hidden_act": "mish"}, "hidden_act='mish' is not supported"),
        ({"max_position_embeddings": 2}, "max_position_embeddings=2 leaves no position"),
    ],
)
def test_unsupported_configs_are_refused(tmp_path, change, match):
    hf_roberta("xlm-roberta", first_config("xlm-roberta"), "token-classification").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=match):
        jaxkernel.from_pretrained(tmp_path)


def test_bare_model_from_an_mlm_checkpoint_gets_a_fresh_pooler(tmp_path, caplog):
    """roberta-base is saved from RobertaForMaskedLM, without a pooler: HF initialises it, so do we."""
    hf_roberta("roberta", first_config("roberta"), "masked-lm").save_pretrained(tmp_path)
    with caplog.at_level("WARNING"):
        model = jaxkernel.from_pretrained(tmp_path, task="feature-extraction")
    assert "pooler.dense.kernel" in caplog.text
    ids, mask = roberta_batch("roberta", first_config("roberta"))
    assert model(ids, mask).pooler_output.shape == (3, 36)
