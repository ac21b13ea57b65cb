"""BERT logits and hidden states equal transformers PyTorch (float32, padded batches)."""

import numpy as np
import pytest
import torch

import jaxkernel
from tiny_models import BERT_CONFIGS, BERT_HEADS, hf_bert, padded_batch

ATOL = 1e-5


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Seeded HF models saved to disk, one per (config, head, num_labels)."""
    cache = {}

    def get(name, task, num_labels):
        key = (name, task, num_labels)
        if key not in cache:
            model = hf_bert(name, task, num_labels=num_labels, seed=len(cache))
            path = tmp_path_factory.mktemp("bert")
            model.save_pretrained(path)
            cache[key] = (model, path)
        return cache[key]

    return get


@pytest.mark.parametrize("name", list(BERT_CONFIGS))
@pytest.mark.parametrize("task", list(BERT_HEADS))
def test_every_head_matches_transformers(hf_dirs, name, task):
    num_labels = 7 if task == "token-classification" else 2
    hf_model, path = hf_dirs(name, task, num_labels)
    model = jaxkernel.from_pretrained(path)
    assert model.task == task

    vocab = BERT_CONFIGS[name]["vocab_size"]
    ids, mask = padded_batch(vocab, lengths=(11, 7, 2), seed=3)
    token_types = np.zeros_like(ids)
    token_types[:, 4:] = 1
    with torch.no_grad():
        ref = hf_model(
            torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(token_types),
            output_hidden_states=True,
        )
    out = model(ids, mask, token_types)
    encoder = model if task == "feature-extraction" else model.bert
    hidden = encoder(ids, mask, token_types).last_hidden_state
    np.testing.assert_allclose(np.asarray(hidden), ref.hidden_states[-1].numpy(), atol=ATOL)

    if task == "feature-extraction":
        np.testing.assert_allclose(np.asarray(out.pooler_output), ref.pooler_output.numpy(), atol=ATOL)
    elif task == "question-answering":
        np.testing.assert_allclose(np.asarray(out[0]), ref.start_logits.numpy(), atol=ATOL)
        np.testing.assert_allclose(np.asarray(out[1]), ref.end_logits.numpy(), atol=ATOL)
    else:
        assert out.shape == tuple(ref.logits.shape)
        np.testing.assert_allclose(np.asarray(out), ref.logits.numpy(), atol=ATOL)


def test_num_labels_seven_and_label_names_come_from_config(tmp_path):
    hf_model = hf_bert("h36-heads3", "token-classification", num_labels=7)
    hf_model.config.id2label = {i: f"TAG{i}" for i in range(7)}
    hf_model.config.label2id = {f"TAG{i}": i for i in range(7)}
    hf_model.save_pretrained(tmp_path)
    model = jaxkernel.from_pretrained(tmp_path)
    assert model.config.num_labels == 7
    assert model.config.labels == tuple(f"TAG{i}" for i in range(7))


def test_base_checkpoint_gets_fresh_head(tmp_path, caplog):
    hf_bert("h36-heads3", "feature-extraction").save_pretrained(tmp_path)
    with caplog.at_level("WARNING"):
        model = jaxkernel.from_pretrained(tmp_path, task="sequence-classification", num_labels=3)
    assert model.classifier.kernel.shape == (36, 3)
    assert "classifier.kernel" in caplog.text
    ids, mask = padded_batch(97)
    assert np.isfinite(np.asarray(model(ids, mask))).all()
