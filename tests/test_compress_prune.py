"""Structured pruning (heads + FFN units): importance, surgery, HF export that transformers loads."""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.torch import load_file

import jaxkernel
from jaxkernel.compress.prune import (
    compute_importance, kept_heads, pad_pruned_heads, prune_ffn, prune_heads, prune_model, select_heads,
)
from tiny_models import _randomise, padded_batch

BERT = dict(vocab_size=71, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=40,
            max_position_embeddings=40)


def _hf_bert_dir(tmp_path, task_cls=transformers.BertForTokenClassification, num_labels=5):
    torch.manual_seed(0)
    model = _randomise(task_cls(transformers.BertConfig(**BERT, num_labels=num_labels)), 0)
    model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def _batches(vocab, num_labels, n=3, token_level=True):
    out = []
    for seed in range(n):
        ids, mask = padded_batch(vocab, lengths=(9, 6, 4, 7), seed=seed)
        rng = np.random.RandomState(seed)
        if token_level:
            labels = np.where(mask == 1, rng.randint(0, num_labels, ids.shape), -100)
        else:
            labels = rng.randint(0, num_labels, ids.shape[0])
        out.append(dict(input_ids=ids, attention_mask=mask, labels=labels))
    return out


def _torch_load_pruned(directory, task_cls):
    """What transformers < 5 does with ``pruned_heads``: shrink q/k/v rows and the output
    columns of those layers, then load the checkpoint strictly (transformers 5 dropped it)."""
    config = json.loads((directory / "config.json").read_text())
    pruned = {int(k): v for k, v in config.pop("pruned_heads", {}).items()}
    model = task_cls(transformers.BertConfig(**{k: v for k, v in config.items() if k != "architectures"}))
    head = config["hidden_size"] // config["num_attention_heads"]
    for layer, heads in pruned.items():
        attn = model.bert.encoder.layer[layer].attention
        n = config["num_attention_heads"] - len(heads)
        for name in ("query", "key", "value"):
            setattr(attn.self, name, torch.nn.Linear(config["hidden_size"], n * head))
        attn.output.dense = torch.nn.Linear(n * head, config["hidden_size"])
    state = load_file(directory / "model.safetensors")
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return model.eval()


def _logits(model, ids, mask):
    return np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))


def test_head_importance_is_the_gate_gradient(tmp_path):
    """|dL/dxi_h| from W*dW equals a finite difference of the loss in a head's output gate."""
    model = jaxkernel.from_pretrained(_hf_bert_dir(tmp_path))
    batch = _batches(BERT["vocab_size"], 5, n=1)[0]
    scores = compute_importance(model, [batch])
    raw = scores.heads[1] * 1.0  # per-layer normalised: compare ratios
    loss = jaxkernel.train.losses.loss_for_task(model.task)
    dense = model.bert.encoder.layer[1].attention.output.dense
    kernel = np.asarray(dense.kernel[...])
    grads = []
    for h in range(4):
        def loss_at(eps, h=h):
            k = kernel.copy()
            k[h * 8:(h + 1) * 8] *= 1 + eps
            dense.kernel[...] = jnp.asarray(k)
            return float(loss(model(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"])), batch)[0])
        grads.append(abs(loss_at(3e-2) - loss_at(-3e-2)) / 6e-2)
    dense.kernel[...] = jnp.asarray(kernel)
    grads = np.array(grads) / np.linalg.norm(grads)
    np.testing.assert_allclose(raw, grads, rtol=2e-2, atol=3e-3)


def test_pruned_bert_exports_pruned_heads_and_matches_transformers(tmp_path):
    model = jaxkernel.from_pretrained(_hf_bert_dir(tmp_path))
    scores = compute_importance(model, _batches(BERT["vocab_size"], 5))
    ids, mask = padded_batch(BERT["vocab_size"], lengths=(9, 5, 3), seed=7)
    report = prune_model(model, scores, heads=0.5, ffn=0.25)
    assert all(len(h) == 2 for h in report["heads"].values()) and report["ffn"] == 10
    # the least important heads went
    for layer, removed in report["heads"].items():
        assert set(removed) == set(np.argsort(scores.heads[layer])[:2].tolist())
    attn = model.bert.encoder.layer[0].attention
    assert attn.self.query.kernel.shape == (32, 16) and attn.output.dense.kernel.shape == (16, 32)
    assert model.bert.encoder.layer[0].intermediate.dense.kernel.shape == (32, 30)
    ours = _logits(model, ids, mask)

    out = jaxkernel.save_pretrained(model, tmp_path / "pruned")
    config = json.loads((out / "config.json").read_text())
    assert config["intermediate_size"] == 30
    assert config["pruned_heads"] == {str(k): v for k, v in report["heads"].items()}
    torch_model = _torch_load_pruned(out, transformers.BertForTokenClassification)
    with torch.no_grad():
        theirs = torch_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    again = jaxkernel.from_pretrained(out)
    np.testing.assert_allclose(_logits(again, ids, mask), ours, atol=1e-6)

    # transformers >= 5 has no pruned_heads: the zero-padded export loads there as-is
    padded = jaxkernel.save_pretrained(pad_pruned_heads(model), tmp_path / "padded")
    assert "pruned_heads" not in json.loads((padded / "config.json").read_text())
    plain = transformers.AutoModelForTokenClassification.from_pretrained(padded).eval()
    with torch.no_grad():
        theirs = plain(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_pruning_twice_keeps_original_head_numbers(tmp_path):
    model = jaxkernel.from_pretrained(_hf_bert_dir(tmp_path))
    prune_heads(model, {1: [1]})
    prune_heads(model, {1: [3], 2: [0]})
    assert dict(model.config.pruned_heads) == {1: (1, 3), 2: (0,)}
    assert kept_heads(model.config, 1) == [0, 2]
    assert model.bert.encoder.layer[1].attention.self.num_heads == 2
    with pytest.raises(ValueError, match="not present"):
        prune_heads(model, {1: [1]})
    with pytest.raises(ValueError, match="leaves none"):
        prune_heads(model, {1: [0, 2]})
    with pytest.raises(ValueError, match="same number"):
        prune_ffn(model, {0: [1], 1: [2]})


def test_global_scope_keeps_a_head_per_layer(tmp_path):
    model = jaxkernel.from_pretrained(_hf_bert_dir(tmp_path))
    scores = compute_importance(model, _batches(BERT["vocab_size"], 5, n=1))
    chosen = select_heads(model, scores, 11, scope="global")
    assert sum(map(len, chosen.values())) == 9 and all(len(h) == 3 for h in chosen.values())
    chosen = select_heads(model, scores, 0.25, scope="global")
    assert sum(map(len, chosen.values())) == 3


def test_gpt2_prunes_ffn_only(tmp_path):
    torch.manual_seed(0)
    hf = _randomise(transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=61, n_embd=24, n_layer=2, n_head=2, n_positions=32, n_inner=40)), 0)
    hf.save_pretrained(tmp_path / "gpt2")
    model = jaxkernel.from_pretrained(tmp_path / "gpt2")
    ids, mask = padded_batch(61, lengths=(8, 8), seed=1)
    batch = dict(input_ids=ids, attention_mask=mask)
    scores = compute_importance(model, [batch], heads=False)
    with pytest.raises(ValueError, match="pruned_heads"):
        prune_model(model, scores, heads=0.5)
    prune_model(model, scores, ffn=0.25)
    out = jaxkernel.save_pretrained(model, tmp_path / "gpt2-pruned")
    assert json.loads((out / "config.json").read_text())["n_inner"] == 30
    plain = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    with torch.no_grad():
        theirs = plain(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask))[0])
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_pruning_refuses_adapters(tmp_path):
    model = jaxkernel.from_pretrained(_hf_bert_dir(tmp_path))
    jaxkernel.apply_lora(model, jaxkernel.LoraConfig(r=2, alpha=4, target_modules=["query"]))
    with pytest.raises(TypeError, match="merge"):
        prune_heads(model, {0: [0]})


def test_prune_cli_on_wikiann(tmp_path, shared_data, minilm_dir, capsys):
    from compress_fixtures import tiny_bert_dir
    from jaxkernel.cli import main

    src = tiny_bert_dir(tmp_path, minilm_dir)
    out = tmp_path / "pruned"
    preset = str(Path(__file__).resolve().parents[1] / "configs" / "bert_ner_prune_heads.yaml")
    code = main(["prune", str(src), str(out), "data.max_train_examples=32", "data.max_eval_examples=16",
                 "data.max_length=32", "data.buckets=[32]", "train.batch_size=8",
                 "--heads", "0.5", "--ffn", "12", "--config", preset, "--data", str(shared_data / "wikiann-en"),
                 "--batches", "2", "--latency-runs", "1", "--latency-length", "16"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "removed 6 attention heads (layer) and 12 FFN units per layer" in printed
    assert "parameters" in printed and "bytes" in printed and "latency" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["intermediate_size"] == 36 and sum(map(len, config["pruned_heads"].values())) == 6
    report = json.loads((out / "prune_report.json").read_text())
    assert report["after"]["parameters"] < report["before"]["parameters"]
    assert (out / "tokenizer.json").exists()
    again = jaxkernel.from_pretrained(out)
    assert again.bert.encoder.layer[0].attention.self.num_heads == 2
