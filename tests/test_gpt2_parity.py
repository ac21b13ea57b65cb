"""GPT-2 logits and hidden states equal transformers PyTorch; cache == no cache."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxkernel
from jaxkernel.models.gpt2 import KVCache, position_ids_from_mask
from tiny_models import GPT2_CONFIGS, GPT2_HEADS, hf_gpt2, padded_batch

ATOL = 1e-5


@pytest.mark.parametrize("name", list(GPT2_CONFIGS))
@pytest.mark.parametrize("task", list(GPT2_HEADS))
@pytest.mark.parametrize("left", [False, True], ids=["right-pad", "left-pad"])
def test_every_head_matches_transformers(tmp_path, name, task, left):
    num_labels = 7 if name.startswith("e24") else 2
    hf_model = hf_gpt2(name, task, num_labels=num_labels, pad_token_id=0)
    hf_model.save_pretrained(tmp_path)
    model = jaxkernel.from_pretrained(tmp_path)
    assert model.task == task

    ids, mask = padded_batch(GPT2_CONFIGS[name]["vocab_size"], lengths=(10, 6, 3), seed=1, left=left)
    positions = np.asarray(position_ids_from_mask(jnp.asarray(mask)))
    with torch.no_grad():
        ref = hf_model(
            torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions),
            output_hidden_states=True,
        )
    real = mask.astype(bool)  # values at padded positions are meaningless in both libraries
    decoder = model if task == "feature-extraction" else model.transformer
    hidden, _ = decoder(ids, mask)
    np.testing.assert_allclose(np.asarray(hidden)[real], ref.hidden_states[-1].numpy()[real], atol=ATOL)
    if task == "causal-lm":
        logits, _ = model(ids, mask)
        np.testing.assert_allclose(np.asarray(logits)[real], ref.logits.numpy()[real], atol=ATOL)
    elif task == "sequence-classification":
        logits = model(ids, mask)
        assert logits.shape == (3, num_labels)
        np.testing.assert_allclose(np.asarray(logits), ref.logits.numpy(), atol=ATOL)


def test_cache_and_no_cache_give_the_same_logits(tmp_path):
    hf_gpt2("e24-heads2-inner", "causal-lm").save_pretrained(tmp_path)
    model = jaxkernel.from_pretrained(tmp_path)
    ids, mask = padded_batch(61, lengths=(9, 5), seed=2, left=True)
    full, _ = model(ids, mask)

    prompt = 4
    cache = KVCache.create(model.config, batch=2, max_length=ids.shape[1])
    logits, cache = model(ids[:, :prompt], mask[:, :prompt], cache=cache)
    steps = [logits]
    for t in range(prompt, ids.shape[1]):
        logits, cache = model(ids[:, t : t + 1], mask[:, t : t + 1], cache=cache)
        steps.append(logits)
    incremental = np.concatenate([np.asarray(s) for s in steps], axis=1)
    real = mask.astype(bool)
    np.testing.assert_allclose(incremental[real], np.asarray(full)[real], atol=ATOL)
