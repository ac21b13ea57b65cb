"""Llama greedy generation is token-identical to transformers ``generate`` (left padding, GQA, several EOS ids)."""

import numpy as np
import pytest
import torch

import jaxkernel
from jaxkernel.models.generation import GenerationConfig, generate
from tiny_models import LLAMA_CONFIGS, hf_llama, padded_batch

NEW_TOKENS = 32
PROMPT = 7


@pytest.fixture(scope="module", params=list(LLAMA_CONFIGS))
def pair(request, tmp_path_factory):
    """A seeded random HF Llama (embeddings scaled up so greedy output varies) and our copy."""
    name = request.param
    hf = hf_llama(name, "causal-lm", seed=1)
    with torch.no_grad():
        hf.model.embed_tokens.weight.mul_(5.0)
    path = tmp_path_factory.mktemp(name)
    hf.save_pretrained(path)
    ids, mask = padded_batch(LLAMA_CONFIGS[name]["vocab_size"], lengths=(PROMPT, 4, 5), seed=1, left=True)
    return hf, jaxkernel.from_pretrained(path), ids, mask


def hf_generate(hf, ids, mask, **kwargs):
    with torch.no_grad():
        out = hf.generate(
            torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=NEW_TOKENS,
            do_sample=False, pad_token_id=0, **kwargs,
        )
    return out.numpy()


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_greedy_is_token_identical_with_left_padding(pair, use_cache):
    hf, model, ids, mask = pair
    ref = hf_generate(hf, ids, mask, eos_token_id=None)
    ours = np.asarray(generate(model, ids, mask, max_new_tokens=NEW_TOKENS, use_cache=use_cache))
    assert ours.shape == ref.shape == (3, PROMPT + NEW_TOKENS)
    assert len(np.unique(ref[:, PROMPT:])) >= 5, "reference output too repetitive to be a real check"
    np.testing.assert_array_equal(ours, ref)


def test_several_eos_ids_stop_rows_like_transformers(pair):
    """generation_config.json may list several eos_token_id; any of them ends a row."""
    hf, model, ids, mask = pair
    free = hf_generate(hf, ids, mask, eos_token_id=None)
    eos = [int(free[0, PROMPT + 5]), int(free[1, PROMPT + 9])]  # tokens rows 0 and 1 emit mid-way
    ref = hf_generate(hf, ids, mask, eos_token_id=eos)
    for use_cache in (True, False):
        ours = np.asarray(generate(model, ids, mask, max_new_tokens=NEW_TOKENS, eos_token_id=eos, pad_token_id=0,
                                   use_cache=use_cache))
        width = min(ref.shape[1], ours.shape[1])  # HF stops early once every row is done
        np.testing.assert_array_equal(ours[:, :width], ref[:, :width])
    for row in (0, 1):
        first = min(list(ours[row, PROMPT:]).index(e) for e in eos if e in ours[row, PROMPT:])
        assert (ours[row, PROMPT + first + 1 :] == 0).all()


def test_generation_config_takes_a_list_of_eos_ids():
    config = GenerationConfig(eos_token_id=[5, np.int64(7)])
    assert config.eos_token_id == (5, 7)
    hash(config)
    assert GenerationConfig(eos_token_id=np.int64(3)).eos_token_id == 3
    assert GenerationConfig(eos_token_id=[]).eos_token_id is None
