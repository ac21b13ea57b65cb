"""int8 keeps the answers: real MiniLM embeddings and a GPT-2 trained on Tiny Shakespeare.

The GPT-2 is char-level (65 symbols): with the 50,257-entry BPE vocabulary the
embedding and softmax would dominate a model this small and need far more steps
than a test can afford on two CPU cores. It is trained once per pytest session
(about a minute) and cached as an HF directory under pytest's tmp dir.
"""

import numpy as np
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

import jaxkernel
from jaxkernel.quant.memory import param_bytes
from jaxkernel.quant.transform import quantize_model, quantized_paths

N_SENTENCES = 64


def _sst2_sentences(shared_data, n=N_SENTENCES):
    lines = (shared_data / "sst2" / "dev.tsv").read_text().splitlines()[1:]
    return [line.split("\t", 1)[1] for line in lines[:n]]


def _embedder(model):
    """Jitted mean-pooled sentence embeddings (sentence-transformers' pooling)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def embed(state, ids, mask, types):
        hidden = nnx.merge(graphdef, state)(ids, mask, types).last_hidden_state  # (B, T, D)
        m = mask[..., None].astype(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1)  # (B, D)

    return lambda batch: np.asarray(embed(state, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]))


def _cosines(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.slow
def test_minilm_int8_embeddings_match_float(minilm_dir, shared_data):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    batch = dict(tokenizer(_sst2_sentences(shared_data), padding=True, return_tensors="np"))
    float_model = jaxkernel.from_pretrained(minilm_dir)
    reference = _embedder(float_model)(batch)
    figures = {}
    for mode in ("weight_only", "w8a8"):
        model = quantize_model(nnx.clone(float_model), mode=mode)
        assert len(quantized_paths(model)) == 6 * 6  # every encoder linear
        figures[mode] = _cosines(_embedder(model)(batch), reference)
    print(
        f"\nMiniLM mean-pooled cosine vs float32 over {N_SENTENCES} SST-2 sentences: "
        + ", ".join(f"{m} min {c.min():.6f} mean {c.mean():.6f}" for m, c in figures.items())
    )
    assert len(reference) >= 50
    # Measured here (float32, CPU): weight-only mean 0.99950, min 0.99805; W8A8 mean 0.99643 (the
    # README's 0.9964), min 0.98570. Each bar allows 1.4x to 2x the measured 1 - cosine, so a change
    # that costs real accuracy fails (the issue's own bar, mean >= 0.99, allowed 2.8x for W8A8).
    assert figures["weight_only"].mean() >= 0.999 and figures["weight_only"].min() >= 0.997
    assert figures["w8a8"].mean() >= 0.995 and figures["w8a8"].min() >= 0.98


def test_minilm_quantized_linears_take_at_most_027x_float32_bytes(minilm_dir):
    float_model = jaxkernel.from_pretrained(minilm_dir)
    before = param_bytes(float_model)
    model = quantize_model(float_model)
    after = param_bytes(model)
    paths = quantized_paths(model)
    ratio = after.bytes_under(paths) / before.bytes_under(paths)
    print(f"\nMiniLM quantized linears: {before.bytes_under(paths)} -> {after.bytes_under(paths)} bytes "
          f"({ratio:.4f}x); whole model {after.total / before.total:.4f}x")
    assert ratio <= 0.27
    assert after.by_dtype["int8"] == sum(np.prod(s) for d, s, _ in after.by_variable.values() if d == "int8")


# ---------------------------------------------------------------- GPT-2 on Tiny Shakespeare

SEQ, BATCH, STEPS, PEAK_LR = 64, 32, 300, 1e-2
HELD_OUT_WINDOWS = 128


def _char_data(shared_data):
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text()
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((lookup[c] for c in text), np.int32, len(text))
    split = int(0.9 * len(ids))
    return chars, ids[:split], ids[split:]


def _lm_loss(model, x, y):
    logits, _ = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _train(config, train_ids, seed=0):
    model = jaxkernel.Gpt2LMHeadModel(config, rngs=nnx.Rngs(seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, PEAK_LR, 20, STEPS, 1e-4), weight_decay=0.01)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: _lm_loss(nnx.merge(graphdef, p, rest), x, y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.RandomState(seed)
    losses = []
    for _ in range(STEPS):
        starts = rng.randint(0, len(train_ids) - SEQ - 1, BATCH)
        x = np.stack([train_ids[s:s + SEQ] for s in starts])
        y = np.stack([train_ids[s + 1:s + SEQ + 1] for s in starts])
        params, opt_state, loss = step(params, opt_state, x, y)
        losses.append(float(loss))
    nnx.update(model, params)
    return model, losses


@pytest.fixture(scope="session")
def shakespeare_gpt2(shared_data, tmp_path_factory):
    """(model, held-out ids): a 2-layer char GPT-2 trained for STEPS steps, cached as an HF dir."""
    chars, train_ids, held_ids = _char_data(shared_data)
    cache = tmp_path_factory.getbasetemp() / f"gpt2-shakespeare-char-{SEQ}-{BATCH}-{STEPS}"
    if not (cache / "config.json").is_file():
        config = jaxkernel.Gpt2Config(
            vocab_size=len(chars), n_positions=SEQ, n_embd=64, n_layer=2, n_head=4,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
        )
        model, losses = _train(config, train_ids)
        assert np.mean(losses[-20:]) < 0.7 * np.mean(losses[:5]), "training did not learn"
        jaxkernel.save_pretrained(model, cache)
    return jaxkernel.from_pretrained(cache), held_ids


def _bigram_perplexity(train_ids, held_ids, alpha=0.1):
    """Held-out perplexity, on _perplexity's windows, of an add-alpha character bigram model of ``train_ids``."""
    vocab = int(max(train_ids.max(), held_ids.max())) + 1
    counts = np.full((vocab, vocab), alpha)
    np.add.at(counts, (train_ids[:-1], train_ids[1:]), 1.0)
    probs = counts / counts.sum(1, keepdims=True)
    n = HELD_OUT_WINDOWS * SEQ
    return float(np.exp(-np.log(probs[held_ids[:n], held_ids[1:n + 1]]).mean()))


def _perplexity(model, held_ids):
    n = HELD_OUT_WINDOWS * SEQ
    x = held_ids[:n].reshape(HELD_OUT_WINDOWS, SEQ)
    y = held_ids[1:n + 1].reshape(HELD_OUT_WINDOWS, SEQ)
    graphdef, state = nnx.split(model)
    loss = jax.jit(lambda s: _lm_loss(nnx.merge(graphdef, s), x, y))(state)
    return float(jnp.exp(loss))


@pytest.mark.slow
def test_gpt2_int8_loses_at_most_1pct_perplexity(shakespeare_gpt2, shared_data):
    model, held_ids = shakespeare_gpt2
    float_ppl = _perplexity(model, held_ids)
    weight_only = _perplexity(quantize_model(nnx.clone(model)), held_ids)
    w8a8 = _perplexity(quantize_model(nnx.clone(model), mode="w8a8"), held_ids)
    print(f"\nTiny Shakespeare held-out perplexity ({HELD_OUT_WINDOWS * SEQ} chars): float32 {float_ppl:.4f}, "
          f"int8 weight-only {weight_only:.4f} ({weight_only / float_ppl - 1:+.3%}), "
          f"W8A8 {w8a8:.4f} ({w8a8 / float_ppl - 1:+.3%})")
    # Measured here: float32 10.89. The bar is a character bigram model fit on the same training
    # text (11.89 on this held-out slice; the unigram level is 28.2): the GPT-2 must beat it by 5%,
    # which a model that learned only character pairs cannot.
    bigram = _bigram_perplexity(_char_data(shared_data)[1], held_ids)
    assert float_ppl < 0.95 * bigram, (float_ppl, bigram)
    # Measured: +0.003% (weight-only) and +0.008% (W8A8); the issue asks for at most 1%. A 0.1% bar
    # keeps more than 10x margin over the measurement.
    assert weight_only <= 1.001 * float_ppl
    assert w8a8 <= 1.001 * float_ppl
