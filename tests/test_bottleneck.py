"""Bottleneck adapters against what AdapterHub's `adapters` library itself produced.

`adapters` pins transformers 4.57 and cannot be installed next to transformers 5, so
../shared/data/adapters-fixture holds its outputs (see its README): a tiny seeded BERT, a
Houlsby and a Pfeiffer adapter with random non-zero weights saved by `save_adapter` (torch
`.bin` and `adapter.safetensors`), an input batch and the library's last hidden states.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import load_file

import jaxkernel
from jaxkernel.hf.adapterhub_format import load_adapterhub, save_adapterhub
from jaxkernel.models.bert import BERT_TASKS
from jaxkernel.peft import (
    AdapterParam, BottleneckConfig, SavedModuleParam, adapter_layers, apply_bottleneck, merge_and_unload,
    trainable_filter,
)
from peft_helpers import randomise_trainable
from tiny_models import BERT_CONFIGS, padded_batch

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "data" / "adapters-fixture"
CASES = ["houlsby", "pfeiffer"]


@pytest.fixture(scope="module")
def fixture_dir():
    if not (FIXTURE / "summary.json").is_file():
        pytest.skip(f"{FIXTURE} is absent on this machine")
    return FIXTURE


def fixture_base(fixture_dir, task="feature-extraction"):
    return jaxkernel.from_pretrained(fixture_dir / "base", task=task, num_labels=3 if task != "feature-extraction" else None)


def hidden(model, fixture_dir):
    ids, mask = np.load(fixture_dir / "input_ids.npy"), np.load(fixture_dir / "attention_mask.npy")
    out = model(ids, mask)
    return np.asarray(out.last_hidden_state if hasattr(out, "last_hidden_state") else out)


@pytest.mark.parametrize("form", ["adapter", "adapter_safetensors"], ids=["torch-bin", "safetensors"])
@pytest.mark.parametrize("name", CASES)
def test_adapterhub_adapter_reproduces_the_library_outputs(fixture_dir, name, form):
    model = jaxkernel.load_adapter(fixture_base(fixture_dir), fixture_dir / f"{name}_{form}")
    assert model.peft_config.mh_adapter is (name == "houlsby")
    assert len(adapter_layers(model)) == (4 if name == "houlsby" else 2)
    expected = np.load(fixture_dir / f"{name}_last_hidden_state.npy")
    base = np.load(fixture_dir / "base_last_hidden_state.npy")
    diff = float(np.abs(hidden(model, fixture_dir) - expected).max())
    print(f"{name} {form}: max|jaxkernel - adapters| = {diff:.2e} (adapter moves outputs by "
          f"{np.abs(expected - base).max():.2f})")
    assert diff <= 1e-5
    # The tensors in the file are exactly the ones the library used (the npz copy).
    reference = np.load(fixture_dir / f"{name}_adapter_tensors.npz")
    layer = model.encoder.layer[1].output.adapters
    np.testing.assert_array_equal(np.asarray(layer.adapter_down.kernel[...]).T,
                                  reference[f"encoder.layer.1.output.adapters.{name}.adapter_down.0.weight"])


@pytest.mark.parametrize("name", CASES)
def test_saved_adapter_has_the_library_keys_shapes_and_config(fixture_dir, tmp_path, name):
    model = load_adapterhub(fixture_base(fixture_dir), fixture_dir / f"{name}_adapter")
    save_adapterhub(model, tmp_path / "out", model_name="fx/base")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["adapter.safetensors", "adapter_config.json"]
    ours = load_file(str(tmp_path / "out" / "adapter.safetensors"))
    theirs = load_file(str(fixture_dir / f"{name}_adapter_safetensors" / "adapter.safetensors"))
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    with safe_open(str(tmp_path / "out" / "adapter.safetensors"), "np") as f:
        assert f.metadata() is None  # as the library writes it
    our_config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    their_config = json.loads((fixture_dir / f"{name}_adapter_safetensors" / "adapter_config.json").read_text())
    assert our_config.keys() == their_config.keys()
    assert our_config["config"].keys() == their_config["config"].keys()
    assert our_config == their_config  # every value too (model_name given as the fixture's)
    # ...and it reads back to the same outputs.
    again = jaxkernel.load_adapter(fixture_base(fixture_dir), tmp_path / "out")
    np.testing.assert_array_equal(hidden(again, fixture_dir), hidden(model, fixture_dir))


def test_presets_match_the_library_configs(fixture_dir):
    for name, preset in (("houlsby", "double_seq_bn"), ("pfeiffer", "seq_bn")):
        hub = json.loads((fixture_dir / f"{name}_adapter" / "adapter_config.json").read_text())["config"]
        ours = BottleneckConfig.preset(preset, reduction_factor=4)
        assert ours == BottleneckConfig.preset(name, reduction_factor=4)
        for field in ("mh_adapter", "output_adapter", "non_linearity", "original_ln_before", "original_ln_after",
                      "residual_before_ln", "adapter_residual_before_ln", "scaling", "reduction_factor", "init_weights"):
            assert getattr(ours, field) == hub[field], (name, field)


def test_task_model_adapter_and_head_round_trip(fixture_dir, tmp_path):
    model = fixture_base(fixture_dir, "token-classification")
    apply_bottleneck(model, BottleneckConfig.preset("houlsby", reduction_factor=4))
    assert isinstance(model.classifier.kernel, SavedModuleParam)
    randomise_trainable(model, seed=3)
    expected = hidden(model, fixture_dir)
    jaxkernel.save_adapter(model, tmp_path / "a", base_model_name_or_path="fx/base")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["adapter.safetensors", "adapter_config.json", "head_config.json", "model_head.safetensors"]
    keys = load_file(str(tmp_path / "a" / "adapter.safetensors"))
    assert "bert.encoder.layer.0.attention.output.adapters.adapter.adapter_down.0.weight" in keys
    assert set(load_file(str(tmp_path / "a" / "model_head.safetensors"))) == {"classifier.weight", "classifier.bias"}
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["model_class"] == "BertForTokenClassification" and config["name"] == "adapter"
    loaded = jaxkernel.load_adapter(fixture_base(fixture_dir, "token-classification"), tmp_path / "a")
    np.testing.assert_array_equal(hidden(loaded, fixture_dir), expected)
    # The bare encoder reads the same adapter file (keys without the bert. prefix), as the library does.
    bare = jaxkernel.load_adapter(fixture_base(fixture_dir), tmp_path / "a")
    assert len(adapter_layers(bare)) == 4


def test_bottleneck_math_trains_by_type_and_refuses_merging(tmp_path):
    config = jaxkernel.BertConfig(**BERT_CONFIGS["h36-heads3"], num_labels=3)
    model = BERT_TASKS["sequence-classification"](config, rngs=nnx.Rngs(0))
    ids, mask = padded_batch(97)
    before = np.asarray(model(ids, mask))
    apply_bottleneck(model, BottleneckConfig.preset("pfeiffer", reduction_factor=6, init_weights="mam_adapter",
                                                    leave_out=[0]))
    np.testing.assert_allclose(np.asarray(model(ids, mask)), before, atol=1e-6)  # mam init: zero up-projection
    assert list(adapter_layers(model)) == ["bert.encoder.layer.1.output.adapters"]
    layer = model.bert.encoder.layer[1].output
    assert layer.adapters.adapter_down.kernel.shape == (36, 6)
    assert isinstance(layer.adapters.adapter_up.kernel, AdapterParam) and type(layer.dense.kernel) is nnx.Param
    randomise_trainable(model, seed=1)
    assert np.abs(np.asarray(model(ids, mask)) - before).max() > 1e-3

    # One sub-layer by hand: pfeiffer = LN(x + h + up(relu(down(LN(h + x))))).
    h, x = np.random.default_rng(0).normal(size=(2, 3, 36)).astype(np.float32), np.ones((2, 3, 36), np.float32)
    a, ln = layer.adapters, layer.LayerNorm
    inner = ln(h + x)
    expected = ln(x + h + a.adapter_up(np.maximum(a.adapter_down(inner), 0)))
    np.testing.assert_allclose(np.asarray(a(h, x, ln)), np.asarray(expected), atol=1e-5)

    trainable, total = jaxkernel.count_parameters(model)
    assert trainable == (36 * 6 + 6 + 6 * 36 + 36) + (36 * 3 + 3) and trainable_filter(model) is not nnx.Param
    with pytest.raises(ValueError, match="bottleneck adapter cannot be merged.*AdapterHub format"):
        merge_and_unload(model)
    with pytest.raises(ValueError, match="bottleneck adapter cannot be merged"):
        jaxkernel.save_merged(model, tmp_path / "merged")
    with pytest.raises(TypeError, match=r"adapters\.adapter_down\.(kernel|bias) belongs to a PEFT adapter.*AdapterHub"):
        jaxkernel.save_pretrained(model, tmp_path / "plain")
    with pytest.raises(ValueError, match="already has a BottleneckConfig adapter"):
        apply_bottleneck(model, BottleneckConfig())


def test_bad_configs_and_non_bert_models_are_refused(fixture_dir, tmp_path):
    with pytest.raises(ValueError, match="non_linearity='swishy' is not supported"):
        BottleneckConfig(non_linearity="swishy")
    with pytest.raises(ValueError, match="unknown; use one of"):
        BottleneckConfig.preset("lora")
    with pytest.raises(ValueError, match="'learned'.*not"):
        BottleneckConfig(scaling="learned")
    gpt2 = jaxkernel.Gpt2LMHeadModel(jaxkernel.Gpt2Config(vocab_size=50, n_positions=16, n_embd=12, n_layer=1,
                                                          n_head=2), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no bottleneck-adapter hook.*BERT"):
        apply_bottleneck(gpt2, BottleneckConfig())
    # An adapter option jaxkernel does not implement is refused, not silently dropped.
    (tmp_path / "a").mkdir()
    config = json.loads((fixture_dir / "pfeiffer_adapter" / "adapter_config.json").read_text())
    config["config"]["use_gating"] = True
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(config))
    (tmp_path / "a" / "adapter.safetensors").write_bytes(
        (fixture_dir / "pfeiffer_adapter_safetensors" / "adapter.safetensors").read_bytes())
    with pytest.raises(ValueError, match="use_gating=True is not supported"):
        jaxkernel.load_adapter(fixture_base(fixture_dir), tmp_path / "a")
    with pytest.raises(ValueError, match="hidden_size=36 but the model has 24"):
        small = jaxkernel.BertModel(jaxkernel.BertConfig(**BERT_CONFIGS["h24-heads2-relu"]), rngs=nnx.Rngs(0))
        jaxkernel.load_adapter(small, fixture_dir / "pfeiffer_adapter")


@pytest.mark.slow
def test_adapter_preset_trains_through_the_cli_and_exports_adapterhub(tmp_path, shared_data, capsys):
    from jaxkernel.cli import main as cli_main
    from jaxkernel.config import RESOLVED_NAME, load_config
    from jaxkernel.train.loop import Trainer

    run = tmp_path / "run"
    argv = ["train", "configs/bert_ner_adapter.yaml", "train.steps=6", "train.batch_size=8", "data.max_length=32",
            "data.buckets=[32]", "data.max_train_examples=96", "data.max_eval_examples=16", "train.eval_every=6",
            "optimizer.learning_rate=5e-3", f"train.run_dir={run}", "checkpoint.every=6", "logging.progress_bar=false",
            "logging.tensorboard=false", "eval.test_at_end=false", "peft.adapter_config=houlsby"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    trainer = Trainer(load_config(run / RESOLVED_NAME), roles=("train", "eval"))
    assert int(trainer.state.step) == 6
    model = trainer.model_for_inference()
    assert len(adapter_layers(model)) == 2 * 6  # houlsby on all 6 MiniLM layers
    # What trained is the adapters and the head, chosen by type; the adapters moved from their init.
    fresh = apply_bottleneck(jaxkernel.from_pretrained(trainer.data.tokenizer.name_or_path, task="token-classification",
                                                       labels=trainer.data.labels),
                             BottleneckConfig.preset("houlsby", reduction_factor=16))
    down = lambda m: np.asarray(m.bert.encoder.layer[0].output.adapters.adapter_down.kernel[...])  # noqa: E731
    assert np.abs(down(model) - down(fresh)).max() > 1e-4
    np.testing.assert_array_equal(np.asarray(model.bert.encoder.layer[0].output.dense.kernel[...]),
                                  np.asarray(fresh.bert.encoder.layer[0].output.dense.kernel[...]))

    assert cli_main(["export", str(run), str(tmp_path / "out"), "--adapter"]) == 0, capsys.readouterr().err
    assert {"adapter.safetensors", "adapter_config.json", "head_config.json", "model_head.safetensors"} <= {
        p.name for p in (tmp_path / "out").iterdir()}
    batch = next(iter(trainer.evaluate_loader("eval")))
    reloaded = jaxkernel.load_adapter(
        jaxkernel.from_pretrained(trainer.data.tokenizer.name_or_path, task="token-classification",
                                  labels=trainer.data.labels), tmp_path / "out")
    kwargs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    np.testing.assert_allclose(np.asarray(reloaded(**kwargs)), np.asarray(model(**kwargs)), atol=1e-5)
    # A merged (plain transformers) export is refused with the reason and the alternative.
    assert cli_main(["export", str(run), str(tmp_path / "merged")]) == 1
    assert "cannot be merged" in capsys.readouterr().err
