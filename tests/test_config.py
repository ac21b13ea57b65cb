"""Config: YAML presets, typed overrides, clear errors, resolved round trip, generated reference."""

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from jaxkernel import config as C
from jaxkernel.config import Config, ConfigError, apply_overrides, load_config, save_resolved

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
REQUIRED_PRESETS = {
    "bert_ner_lora", "bert_sst2_lora", "bert_sst2_full", "bert_qa", "gpt2_lm_lora", "gpt2_lm_prefix",
    "bert_ner_int8_lora",
}


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_required_presets_exist():
    assert REQUIRED_PRESETS <= {p.stem for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_preset_parses_and_round_trips(path, tmp_path):
    config = load_config(path)
    assert config.train.run_dir == f"runs/{path.stem}"  # presets do not share run directories
    assert config.model.task in typing.get_args(C.Task)
    assert config.data.source, "every preset names its data"
    # every key the file sets is in the resolved config with that value
    raw = yaml.safe_load(path.read_text())
    resolved = C.config_to_dict(config)
    for section, body in raw.items():
        for key, value in (body or {}).items():
            expected = resolved[section][key]
            assert expected == value or (isinstance(value, (int, float)) and float(value) == float(expected)), key
    assert load_config(save_resolved(config, tmp_path)) == config


def test_preset_choices():
    ner = load_config(CONFIG_DIR / "bert_ner_lora.yaml")
    assert (ner.model.task, ner.peft.method, ner.peft.r) == ("token-classification", "lora", 8)
    assert ner.data.source == ("../shared/data/wikiann-en", "hub:wikiann:en")
    assert ner.primary_metric == "f1"
    presets = {p.stem: load_config(p) for p in CONFIGS}
    assert presets["bert_sst2_full"].peft.method == "none"
    assert presets["gpt2_lm_prefix"].peft.method == "prefix" and presets["gpt2_lm_prefix"].model.task == "causal-lm"
    assert presets["bert_ner_int8_lora"].quant.method == "int8"
    assert presets["bert_qa"].data.doc_stride == 128
    assert presets["gpt2_lm_lora"].primary_metric == "perplexity"


def test_packaged_model_path_resolves_offline(minilm_dir):
    config = load_config(CONFIG_DIR / "bert_ner_lora.yaml")
    resolved = Path(C.resolve_path(config.model.path))
    assert resolved == minilm_dir and (resolved / "config.json").is_file()
    assert C.resolve_path("bert-base-cased") == "bert-base-cased"  # hub ids pass through
    with pytest.raises(ConfigError, match="no installed package 'not_a_pkg'.*pip install"):
        C.resolve_path("package:not_a_pkg/model")


def test_defaults_without_file():
    config = load_config()
    assert config == Config()
    assert config.train.batch_size == 32 and config.peft.method == "none"


def test_overrides_are_parsed_into_declared_types():
    config = load_config(None, [
        "train.steps=200", "optimizer.learning_rate=1e-3", "train.remat=true", "checkpoint.every=null",
        "peft.target_modules=[query, value]", "model.labels=[O, B-PER, I-PER]", "mesh.shape=[2, -1]", "mesh.axes=[data, fsdp]",
        "optimizer.max_grad_norm=2", "model.path=1e3", "data.columns.text=review", "mesh.rules={embed: fsdp}",
        "mesh.rules.mlp=[fsdp, tensor]", "model.dtype=bfloat16", "data.source=hub:glue:sst2",
    ])
    assert config.train.steps == 200 and isinstance(config.train.steps, int)
    assert config.optimizer.learning_rate == 1e-3
    assert config.train.remat is True
    assert config.checkpoint.every is None
    assert config.peft.target_modules == ("query", "value")
    assert config.model.labels == ("O", "B-PER", "I-PER") and config.model.num_labels is None
    assert config.mesh.shape == (2, -1)
    assert config.optimizer.max_grad_norm == 2.0 and isinstance(config.optimizer.max_grad_norm, float)
    assert config.model.path == "1e3"  # str fields keep the text verbatim
    assert config.data.columns == {"text": "review"}
    assert config.mesh.rules == {"embed": "fsdp", "mlp": ("fsdp", "tensor")}
    assert config.model.dtype == "bfloat16"
    assert config.data.source == "hub:glue:sst2"
    regex = apply_overrides(config, [r"peft.target_modules=.*\.(query|value)"])
    assert regex.peft.target_modules == r".*\.(query|value)"
    assert apply_overrides(config, ["train.steps=1", "train.steps=7"]).train.steps == 7  # last one wins


def test_yaml_reads_1e_minus_4_as_float(tmp_path):
    # YAML 1.1 reads 1e-4 (no dot) as a string: declared floats still get a float.
    config = load_config(write(tmp_path, "optimizer:\n  learning_rate: 1e-4\n"))
    assert config.optimizer.learning_rate == 1e-4


@pytest.mark.parametrize("override, message", [
    ("trian.steps=3", r"unknown section 'trian'; did you mean 'train'\?"),
    ("train.stpes=3", r"unknown key 'train.stpes'; did you mean 'train.steps'\?"),
    ("optimizer.lr=3", r"unknown key 'optimizer.lr'.*valid keys: optimizer.learning_rate"),
    ("batch_size=8", r"must look like section.key=value; did you mean train.batch_size=8\?"),
    ("train.batch_size=abc", r"train.batch_size: expected int, got 'abc'"),
    ("train.batch_size=1.5", r"train.batch_size: expected int, got 1.5"),
    ("train.remat=maybe", r"train.remat: expected bool"),
    ("model.task=token-clasification", r"did you mean 'token-classification'\?"),
    ("peft.method=lora2", r"'lora2' is not one of 'none', 'lora', 'prefix'"),
    ("mesh.shape=[2, x]", r"mesh.shape\[1\]: expected int"),
    ("optimizer.learning_rate=fast", r"optimizer.learning_rate: expected float, got 'fast'"),
    ("train.run_dir.x=1", r"'train.run_dir' is not a mapping"),
    ("train.batch_size=0", r"train.batch_size=0.*must be >= 1"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_unknown_key_in_yaml_names_file_line_and_suggestion(tmp_path):
    path = write(tmp_path, "model:\n  task: token-classification\ntrain:\n  seed: 1\n  batchsize: 8\n")
    with pytest.raises(ConfigError, match=rf"{path}:5: unknown key 'train.batchsize'; did you mean 'train.batch_size'"):
        load_config(path)
    path = write(tmp_path, "modle:\n  path: x\n")
    with pytest.raises(ConfigError, match=rf"{path}:1: unknown section 'modle'; did you mean 'model'"):
        load_config(path)


def test_wrong_type_in_yaml_names_file_line_and_key(tmp_path):
    path = write(tmp_path, "train:\n  seed: 0\n  batch_size: thirty-two\n")
    with pytest.raises(ConfigError, match=rf"{path}:3: train.batch_size: expected int, got 'thirty-two'"):
        load_config(path)
    path = write(tmp_path, "train: 5\n")
    with pytest.raises(ConfigError, match="section 'train' must be a mapping"):
        load_config(path)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "train:\n  batch_size: 8\n  steps: [1, 2\nmodel:\n  path: x\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+:\d+: invalid YAML"):
        load_config(path)
    path = write(tmp_path, "train:\n  batch_size: 8\n   seed: 1\n")
    with pytest.raises(ConfigError, match=rf"{path}:3:\d+: invalid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_inconsistent_values_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"model.num_labels=3 but model.labels names 2"):
        load_config(None, ["model.labels=[a, b]", "model.num_labels=3"])
    with pytest.raises(ConfigError, match="doc_stride"):
        load_config(None, ["data.max_length=128", "data.doc_stride=100"])
    with pytest.raises(ConfigError, match=r"must reach data.max_length=128"):
        load_config(None, ["data.buckets=[32, 64]"])
    with pytest.raises(ConfigError, match="do not apply to task causal-lm"):
        load_config(None, ["model.task=causal-lm", "model.num_labels=2"])
    path = write(tmp_path, "peft:\n  r: 0\n")
    with pytest.raises(ConfigError, match=rf"{path}:1: peft.r=0"):
        load_config(path)


def test_config_is_frozen():
    config = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.batch_size = 3


def test_save_resolved_round_trip_with_overrides(tmp_path):
    config = load_config(CONFIG_DIR / "bert_ner_lora.yaml", [
        "train.steps=10", "model.labels=[O, B-X, I-X]", "mesh.rules.embed=[fsdp, data]", "mesh.rules.mlp=null",
        "peft.target_modules=.*query", "data.columns={tokens: words}", "mesh.shape=[1, -1, 2]",
    ])
    out = save_resolved(config, tmp_path / "run")
    assert out == tmp_path / "run" / "config.yaml"
    text = out.read_text()
    data = yaml.safe_load(text)
    assert set(data) == set(C.SECTIONS)
    assert all(set(data[s]) == {f.name for f in dataclasses.fields(C.SECTIONS[s])} for s in data)  # every key
    assert data["train"]["steps"] == 10 and data["mesh"]["rules"] == {"embed": ["fsdp", "data"], "mlp": None}
    again = load_config(out)
    assert again == config
    assert again.mesh.rules["embed"] == ("fsdp", "data") and again.mesh.shape == (1, -1, 2)
    assert not list((tmp_path / "run").glob("*.tmp"))
    assert C.load_resolved(tmp_path / "run") == config and C.load_resolved(tmp_path) is None
    changed = apply_overrides(config, ["train.steps=20", "peft.r=4"])
    assert C.config_diff(config, changed) == {"train.steps": (10, 20), "peft.r": (8, 4)}


def test_metric_direction():
    assert C.higher_is_better("f1") and C.higher_is_better("accuracy")
    assert not C.higher_is_better("perplexity") and not C.higher_is_better("eval_loss")


def test_reference_documents_every_key():
    text = C.config_reference()
    for section, cls in C.SECTIONS.items():
        assert f"## `{section}`" in text
        docs = C._field_docs(cls)
        for field in dataclasses.fields(cls):
            assert docs.get(field.name), f"{section}.{field.name} has no comment to document it"
            assert f"| `{field.name}` |" in text
    assert "| `batch_size` | int | `32` | global batch" in text
    assert "Compute dtype for train, eval and predict" in text  # comment lines above a field count too


def test_quant_kwargs_match_quantize_model():
    import inspect

    from jaxkernel.quant.transform import quantize_model

    kwargs = load_config(None, ["quant.method=int8", "quant.skip=[classifier]"]).quant.as_kwargs()
    params = inspect.signature(quantize_model).parameters
    assert set(kwargs) <= set(params) and kwargs["skip"] == ("classifier",)


def test_a_choice_of_strings_is_read_as_text_not_as_yaml(tmp_path):
    """``sparsity.pattern=2:4`` on the command line is the text '2:4' (YAML 1.1 would read 124)."""
    from jaxkernel.config import ConfigError, load_config

    assert load_config(None, ["sparsity.pattern=2:4"]).sparsity.pattern == "2:4"
    path = tmp_path / "run.yaml"
    path.write_text("sparsity:\n  method: magnitude\n  pattern: 2:4\n")  # unquoted in a YAML file
    with pytest.raises(ConfigError, match=r"sparsity.pattern: 124 .*quote it, '2:4'"):
        load_config(path)
