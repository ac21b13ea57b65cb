"""End to end on real data: train from the presets, reach real quality, export, and get the
same predictions from transformers / peft in PyTorch."""

import numpy as np
import peft
import pytest
import torch
import transformers

from jaxkernel.config import load_config
from jaxkernel.train.loop import Trainer
from jaxkernel.train.predict import predict_rows
from jaxkernel.train.step import compiled_forward
from train_fixtures import lm_config, tiny_gpt2_dir

pytestmark = pytest.mark.slow
CI_BUDGET = ["logging.progress_bar=false", "logging.tensorboard=false", "checkpoint.every=null"]


def torch_logits(model, batch):
    inputs = {k: torch.tensor(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    with torch.no_grad():
        return model(**inputs).logits.numpy()


def our_logits(trainer, batch):
    return np.asarray(compiled_forward(trainer.model_for_inference(), batch))


def test_ner_lora_preset_reaches_f1_and_exports(tmp_path):
    config = load_config("configs/bert_ner_lora.yaml", CI_BUDGET + [
        "train.steps=250", "train.batch_size=16", "train.eval_every=250", "data.max_length=32", "data.buckets=[32]",
        "data.max_train_examples=4000", "data.max_eval_examples=400", "optimizer.learning_rate=3e-3",
        "peft.r=16", "peft.alpha=32", "schedule.warmup_ratio=0.1", f"train.run_dir={tmp_path / 'run'}",
    ])
    trainer = Trainer(config)
    results = trainer.fit()
    print("NER test metrics", results["test"])
    assert results["test"]["f1"] >= 0.5

    batch = next(iter(trainer.evaluate_loader("test")))
    ours = our_logits(trainer, batch)
    real = batch["attention_mask"].astype(bool)

    merged_dir = trainer.export(tmp_path / "merged", merged=True)
    merged = transformers.AutoModelForTokenClassification.from_pretrained(merged_dir).eval()
    assert merged.config.id2label[1] == trainer.data.labels[1]
    theirs = torch_logits(merged, batch)
    np.testing.assert_array_equal(theirs.argmax(-1)[real], ours.argmax(-1)[real])
    np.testing.assert_allclose(theirs[real], ours[real], atol=1e-4)

    adapter_dir = trainer.export(tmp_path / "adapter", merged=False)
    base = transformers.AutoModelForTokenClassification.from_pretrained(
        trainer.data.tokenizer.name_or_path, num_labels=len(trainer.data.labels))
    peft_model = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
    np.testing.assert_array_equal(torch_logits(peft_model, batch).argmax(-1)[real], ours.argmax(-1)[real])

    predicted = predict_rows(trainer, [{"text": "Barack Obama visited Paris with Angela Merkel ."}])
    assert set(predicted[0]) >= {"tokens", "tags", "entities"}
    assert all(tag in trainer.data.labels for tag in predicted[0]["tags"])


def test_sst2_lora_beats_075_dev_accuracy(tmp_path):
    config = load_config("configs/bert_sst2_lora.yaml", CI_BUDGET + [
        "train.steps=200", "train.batch_size=16", "train.eval_every=200", "data.max_length=64",
        "data.buckets=[32,64]", "data.max_train_examples=3200", "optimizer.learning_rate=2e-3",
        "peft.r=16", "peft.alpha=32", "eval.test_at_end=false", f"train.run_dir={tmp_path / 'run'}",
    ])
    trainer = Trainer(config)
    results = trainer.fit()
    print("SST-2 dev metrics", results["eval"])
    assert results["eval"]["accuracy"] > 0.75

    batch = next(iter(trainer.evaluate_loader("eval")))
    merged = transformers.AutoModelForSequenceClassification.from_pretrained(
        trainer.export(tmp_path / "merged", merged=True)).eval()
    ours = our_logits(trainer, batch)
    np.testing.assert_array_equal(torch_logits(merged, batch).argmax(-1), ours.argmax(-1))
    labels = [r["label"] for r in predict_rows(trainer, [{"text": "a wonderful, moving film"},
                                                          {"text": "dull and lifeless"}])]
    assert all(label in trainer.data.labels for label in labels)


@pytest.fixture(scope="module")
def shakespeare_gpt2(tmp_path_factory, shared_data):
    """A tiny GPT-2 trained in full (from random init) on Tiny Shakespeare, exported to HF."""
    root = tmp_path_factory.mktemp("gpt2")
    # 64-token blocks train positions 0..63, so prefix tuning (which, like PEFT, shifts real
    # tokens by the prefix length) later meets trained position embeddings.
    config = lm_config(tiny_gpt2_dir(root, shared_data), shared_data, str(root / "run"), "peft.method=none",
                       "checkpoint.every=null", "data.max_train_examples=1000", "data.max_length=64",
                       "data.buckets=[64]", steps=80)
    trainer = Trainer(config)
    before = trainer.evaluate("eval")["perplexity"]
    after = trainer.fit()["eval"]["perplexity"]
    export = trainer.export(root / "export")
    return trainer, before, after, export


def test_gpt2_full_fine_tune_lowers_perplexity_and_exports(shakespeare_gpt2):
    trainer, before, after, export = shakespeare_gpt2
    print(f"GPT-2 full: held-out perplexity {before:.1f} -> {after:.1f}")
    assert after < 0.5 * before
    batch = next(iter(trainer.evaluate_loader("eval")))
    merged = transformers.AutoModelForCausalLM.from_pretrained(export).eval()
    ours = our_logits(trainer, batch)
    theirs = torch_logits(merged, batch)
    np.testing.assert_array_equal(theirs.argmax(-1), ours.argmax(-1))
    np.testing.assert_allclose(theirs, ours, atol=1e-4)


@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_gpt2_peft_fine_tune_lowers_perplexity_further(shakespeare_gpt2, shared_data, tmp_path, method):
    _, _, _, export = shakespeare_gpt2
    # Prefix tuning with PEFT's prefix_projection (the prefix through an MLP, as Li & Liang train it):
    # a bare prefix gained only 1.3% in these 40 steps (2.1% at 3x the learning rate, 1.9% in 120 steps).
    projection = "true" if method == "prefix" else "false"
    config = lm_config(export, shared_data, str(tmp_path / "run"), f"peft.method={method}",
                       "checkpoint.every=null", "data.max_train_examples=2000", "peft.target_modules=[c_attn,c_fc,c_proj]",
                       "peft.num_virtual_tokens=8", f"peft.prefix_projection={projection}", steps=40)
    trainer = Trainer(config)
    before = trainer.evaluate("eval")["perplexity"]
    after = trainer.fit()["eval"]["perplexity"]
    print(f"GPT-2 {method}: held-out perplexity {before:.1f} -> {after:.1f}")
    # Measured here: LoRA 1479.9 -> 1437.3 (-2.9%), prefix 1481.9 -> 1411.4 (-4.8%) in 40 steps.
    # Each must gain about two thirds of that or more: 2% (LoRA), 3% (prefix).
    assert after < {"lora": 0.98, "prefix": 0.97}[method] * before


def test_int8_lora_preset_trains_and_exports_dequantized(tmp_path):
    config = load_config("configs/bert_ner_int8_lora.yaml", CI_BUDGET + [
        "train.steps=6", "train.batch_size=8", "data.max_length=32", "data.buckets=[32]",
        "data.max_train_examples=200", "data.max_eval_examples=40", "train.eval_every=6",
        f"train.run_dir={tmp_path / 'run'}",
    ])
    trainer = Trainer(config)
    trainer.fit()
    batch = next(iter(trainer.evaluate_loader("test")))
    merged = transformers.AutoModelForTokenClassification.from_pretrained(
        trainer.export(tmp_path / "merged", merged=True)).eval()
    real = batch["attention_mask"].astype(bool)
    ours = our_logits(trainer, batch)
    # int8 weight-only computes exactly q * scale, which is what the dequantized export holds
    np.testing.assert_allclose(torch_logits(merged, batch)[real], ours[real], atol=1e-5)
