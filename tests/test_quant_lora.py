"""LoRA on an int8 base (QLoRA-style): it trains, and only the adapter (and head) change."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxkernel
from jaxkernel.data.readers import read_conll
from jaxkernel.peft import LoraConfig, LoraParam, SavedModuleParam, apply_lora, trainable_filter
from jaxkernel.quant.int8 import Int8Linear, Int8Weight, QuantScale
from jaxkernel.quant.transform import quantize_model

TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")


def _wikiann_batches(shared_data, tokenizer, n_batches=2, batch=16, length=48):
    """First-subword labels (-100 elsewhere), like HF token classification."""
    records = read_conll(shared_data / "wikiann-en" / "train.txt")[: n_batches * batch]
    enc = tokenizer([r["tokens"] for r in records], is_split_into_words=True, truncation=True,
                    max_length=length, padding="max_length", return_tensors="np")
    labels = np.full(enc["input_ids"].shape, -100, np.int32)
    for row, record in enumerate(records):
        previous = None
        for pos, word in enumerate(enc.word_ids(row)):
            if word is not None and word != previous:
                labels[row, pos] = TAGS.index(record["tags"][word])
            previous = word
    return [
        {k: np.asarray(v[i * batch:(i + 1) * batch]) for k, v in (*enc.items(), ("labels", labels))}
        for i in range(n_batches)
    ]


def _loss(model, batch):
    logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])  # (B, T, L)
    valid = batch["labels"] >= 0
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, batch["labels"], 0))
    return jnp.sum(ce * valid) / jnp.sum(valid)


def _flat(model, *filters):
    return {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, *filters))}


@pytest.mark.slow
def test_lora_on_int8_minilm_trains_only_the_adapter(minilm_dir, shared_data):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    batches = _wikiann_batches(shared_data, tokenizer)
    model = jaxkernel.from_pretrained(minilm_dir, task="token-classification", labels=TAGS)
    quantize_model(model)
    apply_lora(model, LoraConfig(r=8, alpha=16, target_modules=["query", "value"]))
    assert isinstance(model.bert.encoder.layer[0].attention.self.query.base_layer, Int8Linear)

    frozen_before = _flat(model, nnx.Any(Int8Weight, QuantScale, nnx.All(nnx.Param, nnx.Not(trainable_filter(model)))))
    lora_before = _flat(model, LoraParam)
    head_before = _flat(model, SavedModuleParam)
    assert frozen_before and lora_before and set(head_before) == {"classifier.kernel", "classifier.bias"}

    graphdef, trainable, frozen = nnx.split(model, trainable_filter(model), ...)
    tx = optax.adam(2e-3)
    opt_state = tx.init(trainable)

    @jax.jit
    def step(trainable, opt_state, batch):
        loss, grads = jax.value_and_grad(lambda t: _loss(nnx.merge(graphdef, t, frozen), batch))(trainable)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    evaluate = jax.jit(lambda t, batch: _loss(nnx.merge(graphdef, t, frozen), batch))
    before = np.mean([float(evaluate(trainable, b)) for b in batches])
    for i in range(16):
        trainable, opt_state, _ = step(trainable, opt_state, batches[i % len(batches)])
    after = np.mean([float(evaluate(trainable, b)) for b in batches])
    print(f"\nLoRA on int8 MiniLM, WikiANN loss {before:.4f} -> {after:.4f} (16 steps)")
    assert after < 0.6 * before

    nnx.update(model, trainable)
    frozen_after = _flat(model, nnx.Any(Int8Weight, QuantScale, nnx.All(nnx.Param, nnx.Not(trainable_filter(model)))))
    assert frozen_after.keys() == frozen_before.keys()
    for path, value in frozen_before.items():
        np.testing.assert_array_equal(frozen_after[path], value, err_msg=path)
    assert _flat(model, Int8Weight)["bert.encoder.layer.0.attention.self.query.base_layer.kernel"].dtype == np.int8
    lora_after = _flat(model, LoraParam)
    assert all(not np.array_equal(lora_after[p], lora_before[p]) for p in lora_before if p.endswith("lora_B"))
    head_after = _flat(model, SavedModuleParam)
    assert not np.array_equal(head_after["classifier.kernel"], head_before["classifier.kernel"])


@pytest.mark.parametrize("mode", ["weight_only", "w8a8"])
def test_lora_gradients_reach_the_first_layer_through_int8(mode):
    config = jaxkernel.BertConfig(vocab_size=97, hidden_size=36, num_hidden_layers=2, num_attention_heads=3,
                                  intermediate_size=48, num_labels=3)
    model = jaxkernel.BertForSequenceClassification(config, rngs=nnx.Rngs(0))
    quantize_model(model, mode=mode)
    apply_lora(model, LoraConfig(r=2, target_modules=["query", "value"]))
    ids = jax.random.randint(jax.random.key(0), (2, 9), 1, 97)
    grads = nnx.jit(nnx.grad(lambda m: jnp.square(m(ids)).sum(), argnums=nnx.DiffState(0, LoraParam)))(model)
    flat = {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(grads)}
    assert set(flat) and all("lora_" in p for p in flat)
    assert np.abs(flat["bert.encoder.layer.0.attention.self.value.lora_B"]).max() > 0
