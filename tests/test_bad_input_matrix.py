"""A matrix of bad inputs (issue 13, section 5): configs, data, HF directories, adapters,
checkpoints and CLI use. Each case builds one bad input, runs what a user would run, and checks
that the message names the file / key / line, says how to fix it, and that nothing on disk was
changed or lost (every file under the case's directory and the shared fixtures hashed before and
after).

A case is a function ``(env, tmp) -> (action, must_contain, fix)``: ``action()`` returns the
message the user sees (an exception's text, or what the CLI printed), ``must_contain`` are
literal fragments (file names, keys, line numbers) and ``fix`` a regex for the remedy.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import yaml

import jaxkernel
from jaxkernel.cli import main as cli_main
from jaxkernel.config import RESOLVED_NAME, config_to_dict, load_config, save_resolved
from shared_runs import FAST, tiny_bert_dir, tiny_gpt2, tiny_lm_run
from tiny_models import hf_bert
from train_fixtures import lm_config

CASES: dict[str, callable] = {}


def case(fn):
    CASES[fn.__name__.removeprefix("case_").replace("_", "-")] = fn
    return fn


# -- how a case is run ------------------------------------------------------------------------------------


def raises(fn, exc=Exception):
    """An action: ``fn()`` must raise ``exc``; the message is its text."""

    def action():
        with pytest.raises(exc) as err:
            fn()
        return str(err.value)

    return action


def cli(*argv, rc=1):
    """An action: ``jaxkernel ARGV`` must exit with ``rc``; the message is what it printed."""

    def action():
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli_main([str(a) for a in argv])
            except SystemExit as exit_:  # argparse usage errors
                code = exit_.code
        text = err.getvalue() + out.getvalue()
        assert code == rc, text
        assert "Traceback" not in text
        return text

    return action


def logged(fn):
    """An action whose message is the WARNING log it writes (a recovery, not an error)."""

    def action():
        records = []
        handler = logging.Handler(logging.WARNING)
        handler.emit = records.append
        logger = logging.getLogger("jaxkernel")
        logger.addHandler(handler)
        try:
            fn()
        finally:
            logger.removeHandler(handler)
        return "\n".join(r.getMessage() for r in records)

    return action


def snapshot(*roots: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots for p in sorted(Path(root).rglob("*")) if p.is_file()}


class Env:
    def __init__(self, tmp_path_factory, shared_data):
        self.shared_data = shared_data
        self.bert = tiny_bert_dir(tmp_path_factory)  # token-classification, 3 labels, vocab 97, 40 positions
        self.gpt2 = tiny_gpt2(tmp_path_factory, shared_data)
        self.run = tiny_lm_run(tmp_path_factory, shared_data)  # trained 2 steps, checkpoints 1 and 2
        root = tmp_path_factory.mktemp("matrix")
        self.conll = root / "conll"
        self.conll.mkdir()
        sentences = "angela\tB-PER\nmet\tO\nparis\tB-LOC\n.\tO\n\nparis\tB-LOC\nis\tO\nnice\tO\n\n"
        (self.conll / "train.txt").write_text(sentences * 4)
        self.adapter = root / "adapter"
        model = jaxkernel.from_pretrained(self.bert)
        jaxkernel.apply_lora(model, jaxkernel.LoraConfig(r=2, target_modules=["query", "value"],
                                                         modules_to_save=["classifier"]))
        jaxkernel.save_adapter(model, self.adapter, base_model_name_or_path=str(self.bert))
        self.other_bert = root / "other-bert"
        hf_bert("h24-heads2-relu", "token-classification", num_labels=3).save_pretrained(self.other_bert)
        self.shared = (self.bert, self.gpt2, self.run, self.conll, self.adapter, self.other_bert)

    def ner_overrides(self, *extra):
        return [f"model.path={self.bert}", "model.task=token-classification", f"data.source={self.conll}",
                "data.max_length=32", "data.test_split=null", "data.eval_split=null", "train.batch_size=4",
                *extra]

    def copy(self, src: Path, tmp: Path, name: str | None = None) -> Path:
        dst = tmp / (name or src.name)
        shutil.copytree(src, dst, symlinks=True)
        return dst


@pytest.fixture(scope="module")
def env(tmp_path_factory, shared_data):
    return Env(tmp_path_factory, shared_data)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return path


# == configs =================================================================================================


@case
def case_config_unknown_key_in_yaml(env, tmp):
    path = write(tmp / "run.yaml", "train:\n  batch_size: 8\n  stpes: 3\n")
    return raises(lambda: load_config(path)), [f"{path}:3", "train.stpes"], r"train\.steps"


@case
def case_config_unknown_key_override(env, tmp):
    return raises(lambda: load_config(None, ["train.stpes=3"])), ["train.stpes"], r"train\.steps"


@case
def case_config_unknown_section(env, tmp):
    return raises(lambda: load_config(None, ["trian.steps=3"])), ["trian"], r"'train'|train"


@case
def case_config_wrong_type_override(env, tmp):
    return raises(lambda: load_config(None, ["train.steps=abc"])), ["train.steps", "abc"], r"int"


@case
def case_config_wrong_type_in_yaml(env, tmp):
    path = write(tmp / "run.yaml", "optimizer:\n  learning_rate: 1e-3\ntrain:\n  batch_size: many\n")
    return raises(lambda: load_config(path)), [f"{path}:4", "train.batch_size", "many"], r"int"


@case
def case_config_bad_enum(env, tmp):
    return raises(lambda: load_config(None, ["schedule.kind=cosin"])), ["schedule.kind", "cosin"], r"'cosine'"


@case
def case_config_negative_batch_size(env, tmp):
    return raises(lambda: load_config(None, ["train.batch_size=-8"])), ["train.batch_size", "-8"], r">= ?1|positive"


@case
def case_config_negative_lora_rank(env, tmp):
    return raises(lambda: load_config(None, ["peft.method=lora", "peft.r=-2"])), ["peft.r=-2"], r">= 1"


@case
def case_config_max_length_too_small(env, tmp):
    return raises(lambda: load_config(None, ["data.max_length=0"])), ["data.max_length=0"], r"at least 8"


@case
def case_config_negative_mesh_size(env, tmp):
    return raises(lambda: load_config(None, ["mesh.shape=[2,-3,1]"])), ["mesh.shape", "-3"], r"positive|-1"


@case
def case_config_mesh_does_not_divide_the_devices(env, tmp):
    from jaxkernel.train.build import build_mesh

    config = load_config(None, ["mesh.shape=[-1,3,1]"])  # 8 simulated devices
    return raises(lambda: build_mesh(config)), ["3", "8"], r"mesh\.shape|divid"


@case
def case_config_preset_does_not_fit_the_heads(env, tmp):
    argv = ("plan", env.gpt2, "--preset", "tp", "--mesh", "1,1,3", "--devices", "3", "--batch-size", "3")
    return cli(*argv, rc=0), ["4 attention heads", "tensor mesh axis size 3"], r"tensor size in \[1, 2, 4\]"


@case
def case_config_yaml_syntax_error(env, tmp):
    path = write(tmp / "run.yaml", "train:\n  steps: [1, 2\nmodel:\n  task: causal-lm\n")
    return raises(lambda: load_config(path)), [f"{path}:", "invalid YAML"], r"YAML"


@case
def case_config_file_missing(env, tmp):
    return cli("train", tmp / "nope.yaml"), [str(tmp / "nope.yaml"), "does not exist"], r"YAML config"


@case
def case_config_labels_for_causal_lm(env, tmp):
    return (raises(lambda: load_config(None, ["model.task=causal-lm", "model.labels=[a,b]"])),
            ["model.labels", "causal-lm"], r"remove them")


# == data ======================================================================================================


def records(config_overrides, task="token-classification"):
    from jaxkernel.data.sources import load_records

    config = load_config(None, config_overrides)
    return lambda: load_records(config.data, task)


@case
def case_data_missing_train_split(env, tmp):
    write(tmp / "data" / "dev.txt", "paris\tB-LOC\n")
    return (raises(records(env.ner_overrides(f"data.source={tmp / 'data'}"))),
            [str(tmp / "data"), "'train'", "train.*"], r"data\.train_split")


@case
def case_data_empty_file(env, tmp):
    write(tmp / "data" / "train.txt", "")
    return (raises(records(env.ner_overrides(f"data.source={tmp / 'data'}"))),
            [str(tmp / "data" / "train.txt"), "no examples"], r"add examples")


@case
def case_data_ragged_conll_line(env, tmp):
    write(tmp / "data" / "train.txt", "paris\tB-LOC\nis\tO\n\nnice\n")
    return (raises(records(env.ner_overrides(f"data.source={tmp / 'data'}"))),
            [f"{tmp / 'data' / 'train.txt'}:4", "'nice'"], r"TOKEN<TAB>TAG")


@case
def case_data_conll_extra_column(env, tmp):
    write(tmp / "data" / "train.txt", "paris\tB-LOC\nis\tO\tX\n")
    return (raises(records(env.ner_overrides(f"data.source={tmp / 'data'}"))),
            [f"{tmp / 'data' / 'train.txt'}:2", "3 columns"], r"Remove the extra column")


@case
def case_data_unknown_label_at_test_time(env, tmp):
    from jaxkernel.data.pipeline import build_task_data
    from jaxkernel.data.encode import load_tokenizer

    data = env.copy(env.conll, tmp, "data")
    write(data / "test.txt", "paris\tB-LOC\nmet\tB-MISC\n")
    config = load_config(None, env.ner_overrides(f"data.source={data}", "data.test_split=test"))
    tokenizer = load_tokenizer(str(env.bert))
    return (raises(lambda: build_task_data(config, tokenizer=tokenizer)),
            [f"{data / 'test.txt'}:1", "'B-MISC'"], r"model\.labels")


@case
def case_data_not_utf8(env, tmp):
    write(tmp / "data" / "train.txt", "paris\tB-LOC\n\n".encode() + "caf\u00e9\tO\n".encode("latin-1"))
    return (raises(records(env.ner_overrides(f"data.source={tmp / 'data'}"))),
            [f"{tmp / 'data' / 'train.txt'}:3", "not UTF-8"], r"re-save the file as UTF-8")


@case
def case_data_jsonl_missing_label_column(env, tmp):
    write(tmp / "data" / "train.jsonl", '{"text": "good"}\n{"text": "bad"}\n')
    overrides = [f"data.source={tmp / 'data'}", "model.task=sequence-classification", "data.test_split=null",
                 "data.eval_split=null"]
    return (raises(records(overrides, "sequence-classification")),
            [f"{tmp / 'data' / 'train.jsonl'}:1", "'label'"], r"data\.columns")


@case
def case_data_jsonl_missing_text_column(env, tmp):
    write(tmp / "data" / "train.jsonl", '{"body": "good", "label": "pos"}\n')
    overrides = [f"data.source={tmp / 'data'}", "model.task=sequence-classification", "data.test_split=null",
                 "data.eval_split=null"]
    return (raises(records(overrides, "sequence-classification")),
            [f"{tmp / 'data' / 'train.jsonl'}:1", "'text'", "body"], r"data\.columns=\{text: <column>\}")


@case
def case_data_jsonl_invalid_line(env, tmp):
    write(tmp / "data" / "train.jsonl", '{"text": "good", "label": "pos"}\n{"text": "bad", label: neg}\n')
    overrides = [f"data.source={tmp / 'data'}", "model.task=sequence-classification", "data.test_split=null",
                 "data.eval_split=null"]
    return (raises(records(overrides, "sequence-classification")),
            [f"{tmp / 'data' / 'train.jsonl'}:2", "invalid JSON", "column 17"], r"one JSON object per line")


@case
def case_data_tsv_row_with_extra_field(env, tmp):
    write(tmp / "data" / "train.tsv", "sentence\tlabel\ngood film\tpos\nbad\tfilm\tneg\n")
    overrides = [f"data.source={tmp / 'data'}", "model.task=sequence-classification", "data.test_split=null",
                 "data.eval_split=null"]
    return (raises(records(overrides, "sequence-classification")),
            [f"{tmp / 'data' / 'train.tsv'}:3", "expected 2 fields (sentence, label), got 3"], r"remove the extra tab")


@case
def case_data_tsv_not_utf8(env, tmp):
    write(tmp / "data" / "train.tsv", "sentence\tlabel\n".encode() + "caf\u00e9\tpos\n".encode("latin-1"))
    overrides = [f"data.source={tmp / 'data'}", "model.task=sequence-classification", "data.test_split=null",
                 "data.eval_split=null"]
    return (raises(records(overrides, "sequence-classification")),
            [f"{tmp / 'data' / 'train.tsv'}:2", "not UTF-8"], r"re-save the file as UTF-8")


@case
def case_data_source_missing(env, tmp):
    return (raises(records(env.ner_overrides(f"data.source={tmp / 'nowhere'}"))),
            ["data.source", str(tmp / "nowhere")], r"fix the path")


@case
def case_data_longer_than_the_model(env, tmp):
    from jaxkernel.train.build import build_model

    config = load_config(None, env.ner_overrides("data.max_length=64"))  # the tiny BERT has 40 positions
    return (raises(lambda: build_model(config, labels=("O", "B-LOC", "B-PER"))),
            ["data.max_length=64", "40", str(env.bert)], r"data\.max_length=40|at most 40")


# == Hugging Face model directories ===================================================================


def hf_copy(env, tmp) -> Path:
    return env.copy(env.bert, tmp, "model")


@case
def case_hf_missing_weights(env, tmp):
    model = hf_copy(env, tmp)
    (model / "model.safetensors").unlink()
    return raises(lambda: jaxkernel.from_pretrained(model)), [str(model), "model.safetensors"], r"expected"


@case
def case_hf_truncated_safetensors(env, tmp):
    model = hf_copy(env, tmp)
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 2])
    return (raises(lambda: jaxkernel.from_pretrained(model)),
            [str(model / "model.safetensors"), "not a readable safetensors file"], r"download or copy it again")


@case
def case_hf_bin_pickle_with_code(env, tmp):
    import torch

    model = hf_copy(env, tmp)
    (model / "model.safetensors").unlink()
    torch.save({"weight": torch.zeros(2), "payload": Path("/not/a/tensor")}, model / "pytorch_model.bin")
    return (raises(lambda: jaxkernel.from_pretrained(model)),
            [str(model / "pytorch_model.bin"), "weights_only"], r"model\.safetensors")


@case
def case_hf_wrong_shapes(env, tmp):
    model = hf_copy(env, tmp)
    shutil.copyfile(env.other_bert / "model.safetensors", model / "model.safetensors")
    return (raises(lambda: jaxkernel.from_pretrained(model)),
            [str(model / "model.safetensors"), "has shape (24,)", "expects (36,)"], r"does config\.json match")


@case
def case_hf_unsupported_model_type(env, tmp):
    model = hf_copy(env, tmp)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    return (raises(lambda: jaxkernel.from_pretrained(model)),
            [str(model / "config.json"), "'t5'"], r"supports \[.*'bert'")


@case
def case_hf_unimplemented_config_option(env, tmp):
    model = hf_copy(env, tmp)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "position_embedding_type": "relative_key"}))
    return (raises(lambda: jaxkernel.from_pretrained(model)),
            [str(model / "config.json"), "position_embedding_type", "relative_key"], r"absolute|support")


@case
def case_hf_missing_config(env, tmp):
    model = hf_copy(env, tmp)
    (model / "config.json").unlink()
    return raises(lambda: jaxkernel.from_pretrained(model)), [str(model / "config.json")], r"needs config\.json"


@case
def case_hf_config_not_json(env, tmp):
    model = hf_copy(env, tmp)
    (model / "config.json").write_text('{"model_type": "bert",\n')
    return (raises(lambda: jaxkernel.from_pretrained(model)), [str(model / "config.json"), "not valid JSON", "line 2"],
            r"copy the model's config\.json again")


@case
def case_hf_index_names_a_missing_shard(env, tmp):
    model = hf_copy(env, tmp)
    (model / "model.safetensors").rename(model / "model-00001-of-00002.safetensors")
    write(model / "model.safetensors.index.json", json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    return (raises(lambda: jaxkernel.from_pretrained(model)),
            ["model.safetensors.index.json", "model-00002-of-00002.safetensors", str(model)],
            r"copy or download the missing shard")


@case
def case_hf_path_is_a_file(env, tmp):
    return (raises(lambda: jaxkernel.from_pretrained(env.bert / "config.json")),
            [str(env.bert / "config.json")], r"model \*directory\*")


# == adapters ====================================================================================================


def adapter_copy(env, tmp, **changes) -> Path:
    adapter = env.copy(env.adapter, tmp, "adapter")
    if changes:
        config = json.loads((adapter / "adapter_config.json").read_text())
        (adapter / "adapter_config.json").write_text(json.dumps({**config, **changes}))
    return adapter


def load_onto(base: Path, adapter: Path, task="token-classification"):
    return lambda: jaxkernel.load_adapter(jaxkernel.from_pretrained(base, task=task), adapter)


@case
def case_adapter_for_another_base(env, tmp):
    adapter = adapter_copy(env, tmp)
    return (raises(load_onto(env.other_bert, adapter)),
            [str(adapter / "adapter_model.safetensors"), "lora_A.weight"], r"different base model")


@case
def case_adapter_wrong_task_type(env, tmp):
    adapter = adapter_copy(env, tmp, task_type="SEQ_CLS")
    return (raises(load_onto(env.bert, adapter)),
            [str(adapter / "adapter_config.json"), "SEQ_CLS", "token-classification"],
            r"task='?sequence-classification")


@case
def case_adapter_unknown_peft_type(env, tmp):
    adapter = adapter_copy(env, tmp, peft_type="LOHA")
    return (raises(load_onto(env.bert, adapter)),
            [str(adapter / "adapter_model.safetensors"), "'LOHA'"], r"LORA, IA3 and PREFIX_TUNING")


@case
def case_adapter_rank_mismatch(env, tmp):
    adapter = adapter_copy(env, tmp, r=4)
    return (raises(load_onto(env.bert, adapter)),
            [str(adapter / "adapter_config.json"), "r=4", "rank 2"], r"fix r|re-save")


@case
def case_adapter_missing_config(env, tmp):
    adapter = adapter_copy(env, tmp)
    (adapter / "adapter_config.json").unlink()
    return raises(load_onto(env.bert, adapter)), [str(adapter / "adapter_config.json")], r"needs adapter_config\.json"


@case
def case_adapter_bin_only(env, tmp):
    adapter = adapter_copy(env, tmp)
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    return (raises(load_onto(env.bert, adapter)),
            [str(adapter / "adapter_model.safetensors"), "adapter_model.bin"], r"safe_serialization=True")


@case
def case_adapter_unsupported_lora_option(env, tmp):
    adapter = adapter_copy(env, tmp, bias="all")
    return (raises(load_onto(env.bert, adapter)),
            [str(adapter / "adapter_model.safetensors"), "bias='all'"], r"only 'none'")


# == checkpoints =================================================================================================


def damage(step_dir: Path) -> None:
    for p in step_dir.rglob("*"):
        if p.is_file() and p.parent.name == "d":
            p.write_bytes(b"\0garbage" * (p.stat().st_size // 8 + 1))


@case
def case_checkpoint_run_dir_of_another_config(env, tmp):
    run = env.copy(env.run, tmp, "run")
    other = tmp / "other.yaml"
    other.write_text(yaml.safe_dump(config_to_dict(
        lm_config(env.gpt2, env.shared_data, str(run), *FAST, "peft.r=8", steps=3))))
    return cli("train", other), [str(run), "holds another run", "'r': 4", "'r': 8"], r"new train\.run_dir"


@case
def case_checkpoint_corrupted_latest_step(env, tmp):
    from jaxkernel.train.loop import Trainer

    run = env.copy(env.run, tmp, "run")
    damage(run / "checkpoints" / "2")
    config = load_config(run / RESOLVED_NAME, [f"train.run_dir={run}"])
    return (logged(lambda: Trainer(config, roles=("train",))),
            [str(run / "checkpoints"), "step 2", "unreadable", "restored step 1"], r"kept|left|unreadable")


@case
def case_checkpoint_deleted_step_data(env, tmp):
    from jaxkernel.train.loop import Trainer

    run = env.copy(env.run, tmp, "run")
    for p in (run / "checkpoints" / "2").iterdir():  # the step's folder is there, its contents are gone
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    config = load_config(run / RESOLVED_NAME, [f"train.run_dir={run}"])
    return (logged(lambda: Trainer(config, roles=("train",))),
            [str(run / "checkpoints"), "step 2", "restored step 1"], r"kept|left|unreadable")


@case
def case_checkpoint_all_steps_corrupted(env, tmp):
    run = env.copy(env.run, tmp, "run")
    for step in ("1", "2"):
        damage(run / "checkpoints" / step)
    return cli("eval", run), [str(run / "checkpoints"), "step 2", "step 1"], r"left as they are"


@case
def case_checkpoint_run_without_config(env, tmp):
    run = env.copy(env.run, tmp, "run")
    (run / RESOLVED_NAME).unlink()
    return cli("eval", run), [str(run), RESOLVED_NAME], r"YAML config|run directory that holds"


# == CLI use =====================================================================================================


@case
def case_cli_export_without_arguments(env, tmp):
    return cli("export", rc=2), ["the following arguments are required: config, out\n"], r"usage: jaxkernel export"


@case
def case_cli_export_without_out(env, tmp):
    return cli("export", env.run, rc=2), ["required: out\n"], r"usage: jaxkernel export"


@case
def case_cli_unknown_verb(env, tmp):
    return cli("exprot", env.run, rc=2), ["'exprot'"], r"choose from .*'export'"


@case
def case_cli_run_dir_without_checkpoint(env, tmp):
    run = tmp / "never"
    save_resolved(lm_config(env.gpt2, env.shared_data, str(run), *FAST), run)
    return cli("export", run, tmp / "out"), [str(run), "no checkpoints/ folder"], r"jaxkernel train"


@case
def case_cli_predict_input_missing(env, tmp):
    return (cli("predict", env.run, "--input", tmp / "rows.jsonl"), [str(tmp / "rows.jsonl")],
            r"JSON object per line")


@case
def case_cli_predict_input_bad_line(env, tmp):
    rows = write(tmp / "rows.jsonl", '{"text": "hello"}\n{"text": hello}\n')
    return cli("predict", env.run, "--input", rows), [f"{rows}:2", "invalid JSON"], r"one JSON object per line"


@case
def case_cli_convert_onto_its_source(env, tmp):
    model = hf_copy(env, tmp)
    return cli("convert", model, model), [str(model), "source"], r"another (output )?directory"


@case
def case_cli_export_into_the_run_directory(env, tmp):
    run = env.copy(env.run, tmp, "run")
    return cli("export", run, run), [str(run), "run directory"], r"another (output )?directory"


@case
def case_cli_quantize_missing_source(env, tmp):
    return (cli("quantize", tmp / "nowhere", tmp / "q8"), [str(tmp / "nowhere"), "does not exist"],
            r"local Hugging Face model directory")


# -- the test ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, env, tmp_path):
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    action, must_contain, fix = CASES[name](env, case_dir)
    before = snapshot(tmp_path, *env.shared)
    message = action()
    print(f"[{name}] {message}")  # pytest -s shows what users see
    missing = [fragment for fragment in must_contain if fragment not in message]
    assert not missing, f"message lacks {missing}:\n{message}"
    assert re.search(fix, message), f"message does not say how to fix it ({fix!r}):\n{message}"
    assert snapshot(tmp_path, *env.shared) == before, "a bad input changed files on disk"


def test_the_matrix_is_big_enough_and_counted_in_the_readme():
    groups = {name.split("-")[0] for name in CASES}
    assert len(CASES) >= 40 and groups == {"config", "data", "hf", "adapter", "checkpoint", "cli"}
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"holds {len(CASES)} cases" in readme
