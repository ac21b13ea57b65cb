"""Every export verifies itself (issue 13, section 1): what save_pretrained / save_merged /
save_adapter and the export, convert and quantize --hf-out verbs wrote is read back and compared
with the model in memory — tensors byte for byte, outputs on a probe batch — and, when asked
(the CLI's default), through transformers / peft in a subprocess. A mismatch marks the directory
bad instead of shipping it."""

import json
import os

import numpy as np
import pytest

import jaxkernel
from jaxkernel.cli import main as cli_main
from jaxkernel.hf import io as hf_io
from jaxkernel.hf import peft_format, verify
from jaxkernel.hf.verify import FAILED_RECORD, RECORD, ExportVerificationError
from jaxkernel.peft.lora import lora_layers
from shared_runs import tiny_bert_dir, tiny_lm_run


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return tiny_bert_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def bert(bert_dir):
    return jaxkernel.from_pretrained(bert_dir)


@pytest.fixture(scope="module")
def bert_lora(bert_dir):
    """A LoRA model whose adapter is not a no-op (B != 0) and whose head is saved with it."""
    model = jaxkernel.from_pretrained(bert_dir)
    jaxkernel.apply_lora(model, jaxkernel.LoraConfig(r=2, alpha=4, target_modules=["query", "value"],
                                                     modules_to_save=["classifier"]))
    rng = np.random.RandomState(0)
    for layer in lora_layers(model).values():
        layer.lora_B[...] = (rng.randn(*layer.lora_B.shape) * 0.3).astype(np.float32)
    return model


def record(directory):
    return json.loads((directory / RECORD).read_text())


def outputs_checks(rec):
    return {c["against"]: c for c in rec["checks"] if c["check"] == "outputs"}


def test_happy_path_writes_the_record_with_diffs_below_tolerance(tmp_path, bert, bert_dir):
    out = jaxkernel.save_pretrained(bert, tmp_path / "out", tokenizer_from=bert_dir)
    rec = record(out)
    assert rec["verified"] is True and rec["kind"] == "model" and not rec["problems"]
    assert rec["model"]["architecture"] == "BertForTokenClassification"
    assert rec["probe"]["from"] == "tokenizer"  # the copied tokenizer builds the probe
    assert {"jaxkernel", "jax", "flax"} <= set(rec["versions"])
    tensors = next(c for c in rec["checks"] if c["check"] == "tensors")
    assert tensors["ok"] and tensors["compared"] == len(hf_io.read_weights(out)[0])
    check = outputs_checks(rec)["jaxkernel from_pretrained"]
    assert check["ok"] and check["max_abs_diff"] <= check["tolerance"] <= 1e-3
    assert not (out / FAILED_RECORD).exists()
    assert verify.summary(out).startswith("verified: ")

    # verify=False skips the checks and says so (no stale "verified" record stays behind).
    jaxkernel.save_pretrained(bert, out, verify=False)
    assert record(out)["verified"] is None and "skipped" in record(out)
    assert verify.summary(out).startswith("not verified")


def flip_one(key_part):
    """A safetensors writer that negates the first tensor whose name contains ``key_part``."""
    real = hf_io.save_file

    def save_file(tensors, filename, metadata=None):
        key = next(k for k in sorted(tensors) if key_part in k)
        tensors = {**tensors, key: -tensors[key] + 1.0}
        return real(tensors, filename, metadata=metadata)

    return save_file


def test_a_corrupted_export_is_caught_and_marked_bad(tmp_path, bert, bert_lora, monkeypatch):
    out = tmp_path / "out"
    jaxkernel.save_pretrained(bert, out)  # a good export first: its record must not survive a bad one
    monkeypatch.setattr(hf_io, "save_file", flip_one("layer.1.attention.self.query.weight"))
    with pytest.raises(ExportVerificationError) as err:
        jaxkernel.save_pretrained(bert, out)
    message = str(err.value)
    assert "bert.encoder.layer.1.attention.self.query.weight" in message and "differ on disk" in message
    assert "outputs differ from jaxkernel from_pretrained" in message and FAILED_RECORD in message
    assert not (out / RECORD).exists()
    failed = json.loads((out / FAILED_RECORD).read_text())
    assert failed["verified"] is False and failed["problems"]
    assert verify.summary(out).startswith("FAILED: ")

    # save_merged goes through the same writer; the CLI reports it as one error, exit 1.
    with pytest.raises(ExportVerificationError, match="query.weight"):
        jaxkernel.save_merged(bert_lora, tmp_path / "merged")
    assert (tmp_path / "merged" / FAILED_RECORD).is_file()
    monkeypatch.undo()

    # An adapter whose lora_B is flipped on its way to disk.
    real = peft_format.save_file

    def bad_adapter(tensors, filename, metadata=None):
        key = next(k for k in sorted(tensors) if k.endswith("lora_B.weight"))
        return real({**tensors, key: tensors[key] * 2.0}, filename, metadata=metadata)

    monkeypatch.setattr(peft_format, "save_file", bad_adapter)
    with pytest.raises(ExportVerificationError, match=r"lora_B\.weight") as err:
        jaxkernel.save_adapter(bert_lora, tmp_path / "adapter")
    assert "jaxkernel load_adapter" in str(err.value)
    assert (tmp_path / "adapter" / FAILED_RECORD).is_file() and not (tmp_path / "adapter" / RECORD).exists()


def test_merged_export_is_compared_with_the_unmerged_model(tmp_path, bert_lora):
    out = jaxkernel.save_merged(bert_lora, tmp_path / "merged")
    rec = record(out)
    assert rec["kind"] == "merged" and rec["model"]["peft_type"] == "LoraConfig"
    check = outputs_checks(rec)["jaxkernel from_pretrained"]
    assert 0 < check["max_abs_diff"] <= check["tolerance"]  # merging rounds, the unmerged model is the reference
    assert lora_layers(bert_lora) and not any(layer.merged for layer in lora_layers(bert_lora).values())


def test_torch_probe_runs_peft_in_a_subprocess(tmp_path, bert_lora, bert_dir):
    out = jaxkernel.save_adapter(bert_lora, tmp_path / "adapter", base_model_name_or_path=str(bert_dir),
                                 verify_torch=True)
    rec = record(out)
    assert rec["verified"] is True and rec["kind"] == "adapter"
    checks = outputs_checks(rec)
    assert checks["jaxkernel load_adapter"]["ok"]
    torch_check = checks["peft PeftModel(BertForTokenClassification)"]
    assert torch_check["ok"] and torch_check["max_abs_diff"] <= torch_check["tolerance"]
    assert torch_check["pid"] != os.getpid()  # torch ran in its own process
    assert {"torch", "transformers", "peft"} <= set(rec["versions"])
    assert "vs peft PeftModel(BertForTokenClassification)" in verify.summary(out)


def test_cli_export_verifies_through_transformers_and_records_the_run(tmp_path, tmp_path_factory, shared_data,
                                                                      capsys):
    run = tiny_lm_run(tmp_path_factory, shared_data)
    assert cli_main(["export", str(run), str(tmp_path / "out")]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "verified: " in printed and "vs transformers GPT2LMHeadModel" in printed, printed
    rec = record(tmp_path / "out")
    assert rec["source"]["run_dir"] == str(run) and rec["source"]["step"] == 2
    assert rec["probe"]["from"] == "tokenizer" and rec["kind"] == "merged"
    torch_check = outputs_checks(rec)["transformers GPT2LMHeadModel"]
    assert torch_check["ok"] and torch_check["pid"] != os.getpid()

    assert cli_main(["export", str(run), str(tmp_path / "fast"), "--no-verify"]) == 0
    assert "not verified" in capsys.readouterr().out
    assert record(tmp_path / "fast")["verified"] is None


def test_convert_and_quantize_hf_out_verify_and_ask_for_the_torch_probe(tmp_path, bert_dir, capsys, monkeypatch):
    asked = []
    monkeypatch.setattr(verify._Check, "_check_torch", lambda self, rows: asked.append(self.directory))
    assert cli_main(["convert", str(bert_dir), str(tmp_path / "conv")]) == 0, capsys.readouterr().err
    assert "verified: 39 tensors byte-identical" in capsys.readouterr().out
    assert record(tmp_path / "conv")["source"] == {"model": str(bert_dir)}
    assert cli_main(["quantize", str(bert_dir), str(tmp_path / "q8"), "--hf-out", str(tmp_path / "back")]) == 0
    assert "verified: " in capsys.readouterr().out
    rec = record(tmp_path / "back")
    assert rec["verified"] and rec["source"]["quantized"] == "weight_only"
    assert asked == [tmp_path / "conv", tmp_path / "back"]  # the CLI turns the PyTorch probe on
    assert cli_main(["convert", str(bert_dir), str(tmp_path / "conv2"), "--no-verify"]) == 0
    assert "not verified" in capsys.readouterr().out and len(asked) == 2
