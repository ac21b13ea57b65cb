"""GPT-2 generation is token-identical to transformers ``generate``."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxkernel
from jaxkernel.models.generation import GenerationConfig, generate, process_logits
from tiny_models import hf_gpt2, padded_batch

NEW_TOKENS = 32


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A seeded random HF GPT-2 (embeddings scaled up so greedy output varies) and our copy."""
    hf = hf_gpt2("e36-heads3", "causal-lm", seed=1)
    with torch.no_grad():
        hf.transformer.wte.weight.mul_(5.0)
    path = tmp_path_factory.mktemp("gpt2")
    hf.save_pretrained(path)
    ids, mask = padded_batch(97, lengths=(7, 4, 5), seed=1, left=True)
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
    assert ours.shape == ref.shape == (3, 7 + NEW_TOKENS)
    assert len(np.unique(ref[:, 7:])) >= 5, "reference output too repetitive to be a real check"
    np.testing.assert_array_equal(ours, ref)


def test_eos_stops_rows_and_pads_like_transformers(pair):
    hf, model, ids, mask = pair
    free = hf_generate(hf, ids, mask, eos_token_id=None)
    eos = int(free[0, 7 + 5])  # a token row 0 emits mid-way
    ref = hf_generate(hf, ids, mask, eos_token_id=eos)
    ours = np.asarray(generate(model, ids, mask, max_new_tokens=NEW_TOKENS, eos_token_id=eos, pad_token_id=0))
    width = min(ref.shape[1], ours.shape[1])  # HF stops early once every row is done
    np.testing.assert_array_equal(ours[:, :width], ref[:, :width])
    first_eos = list(ours[0, 7:]).index(eos)
    assert (ours[0, 7 + first_eos + 1 :] == 0).all()


def test_sampling_is_seeded_and_top_k_one_is_greedy(pair):
    _, model, ids, mask = pair
    greedy = np.asarray(generate(model, ids, mask, max_new_tokens=8))
    top1 = np.asarray(generate(model, ids, mask, max_new_tokens=8, do_sample=True, top_k=1, seed=3))
    np.testing.assert_array_equal(top1, greedy)
    a = np.asarray(generate(model, ids, mask, max_new_tokens=8, do_sample=True, temperature=2.0, seed=5))
    b = np.asarray(generate(model, ids, mask, max_new_tokens=8, do_sample=True, temperature=2.0, seed=5))
    c = np.asarray(generate(model, ids, mask, max_new_tokens=8, do_sample=True, temperature=2.0, seed=6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_top_k_and_top_p_filtering():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    top_p = process_logits(logits, GenerationConfig(do_sample=True, top_p=0.7))
    assert np.isfinite(np.asarray(top_p)).tolist() == [[True, True, False, False]]
    top_k = process_logits(logits, GenerationConfig(do_sample=True, top_k=3))
    assert np.isfinite(np.asarray(top_k)).tolist() == [[True, True, True, False]]
    hot = process_logits(logits, GenerationConfig(do_sample=True, temperature=2.0))
    np.testing.assert_allclose(np.asarray(hot), np.asarray(logits) / 2, rtol=1e-6)


def test_bad_generation_options(pair):
    _, model, ids, mask = pair
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, ids, mask, max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, ids, mask, do_sample=True, top_p=1.5)
    with pytest.raises(ValueError, match="the model.s 64 positions"):
        generate(model, ids, mask, max_new_tokens=60)
