"""RoBERTa / XLM-R logits and hidden states equal transformers PyTorch (float32, right-padded batches)."""

import numpy as np
import pytest
import torch

import jaxkernel
from jaxkernel.models.registry import family_of
from roberta_tiny import ALL_CONFIGS, PAD, ROBERTA_CONFIGS, TASKS, hf_roberta, roberta_batch

ATOL = 1e-5


def _torch(hf_model, ids, mask, token_types=None):
    kwargs = {} if token_types is None else {"token_type_ids": torch.tensor(token_types)}
    with torch.no_grad():
        return hf_model(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True, **kwargs)


@pytest.mark.parametrize("model_type,name", ALL_CONFIGS)
@pytest.mark.parametrize("task", TASKS)
def test_every_head_matches_transformers(tmp_path, model_type, name, task):
    num_labels = 7 if task == "token-classification" else 2
    hf_model = hf_roberta(model_type, name, task, num_labels=num_labels, seed=len(name) + len(task))
    hf_model.save_pretrained(tmp_path)
    model = jaxkernel.from_pretrained(tmp_path)
    assert model.task == task and family_of(model).model_type == model_type
    assert model.config.pad_token_id == PAD

    ids, mask = roberta_batch(model_type, name)
    token_types = None
    if ROBERTA_CONFIGS[model_type][name]["type_vocab_size"] > 1:
        token_types = np.zeros_like(ids)
        token_types[:, 4:] = 1
    ref = _torch(hf_model, ids, mask, token_types)
    out = model(ids, mask, token_types)
    base = family_of(model).base_model(model)
    hidden = np.asarray(base(ids, mask, token_types).last_hidden_state)
    diffs = {"hidden": np.abs(hidden - ref.hidden_states[-1].numpy()).max()}
    if task == "feature-extraction":
        diffs["pooler"] = np.abs(np.asarray(out.pooler_output) - ref.pooler_output.numpy()).max()
    elif task == "question-answering":
        diffs["start"] = np.abs(np.asarray(out[0]) - ref.start_logits.numpy()).max()
        diffs["end"] = np.abs(np.asarray(out[1]) - ref.end_logits.numpy()).max()
    else:
        assert out.shape == tuple(ref.logits.shape)
        diffs["logits"] = np.abs(np.asarray(out) - ref.logits.numpy()).max()
    print(f"{model_type} {name} {task}: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    assert max(diffs.values()) <= ATOL, diffs


def test_positions_count_non_pad_tokens_from_pad_plus_one(tmp_path):
    """A pad id inside the sequence shifts later positions, exactly as HF's create_position_ids_from_input_ids."""
    from transformers.models.roberta.modeling_roberta import RobertaEmbeddings

    hf_model = hf_roberta("roberta", "h36-heads3", "feature-extraction")
    hf_model.save_pretrained(tmp_path)
    model = jaxkernel.from_pretrained(tmp_path)
    ids = np.array([[0, 5, PAD, 7, 8, 2, PAD, PAD], [0, 9, 9, 9, 9, 9, 9, 2]])
    expected = RobertaEmbeddings.create_position_ids_from_input_ids(torch.tensor(ids), PAD, 3).numpy()
    np.testing.assert_array_equal(np.asarray(model.default_position_ids(ids, 3)), expected)
    assert model.num_positions() == 40 - PAD - 1


def test_sizes_planner_counts():
    from jaxkernel.models.sizes import abstract_model, count_params

    for name, expected in (("roberta-base", 125e6), ("xlm-roberta-base", 278e6)):
        count = count_params(abstract_model(name))
        print(f"{name}: {count:,}")
        assert abs(count - expected) / expected < 0.01, (name, count)
        assert family_of(abstract_model(name, "token-classification")).model_type == name.removesuffix("-base")
