"""Bad inputs that used to do harm quietly (issue 13, section 0) now stop with a message, and
nothing good on disk is changed: a run without checkpoints is not evaluated or exported, a
copied or moved run directory is its own run, a misspelt LoRA target is named, an extra CoNLL
column is not a label, a damaged checkpoint falls back to the previous one (and is kept), and
data without labels is refused before anything is written."""

import hashlib
import logging
import shutil
from pathlib import Path

import pytest
import yaml

from jaxkernel.checkpoint import CheckpointUnreadable, Checkpointer
from jaxkernel.cli import main as cli_main
from jaxkernel.config import RESOLVED_NAME, config_to_dict, load_config, save_resolved
from jaxkernel.data.readers import DataError, read_conll
from jaxkernel.peft import LoraConfig, apply_lora
from jaxkernel.train.loop import UNREADABLE_DIR, NoCheckpoint, Trainer
from train_fixtures import lm_config, lm_overrides, tiny_gpt2_dir

FAST = ("checkpoint.every=1", "checkpoint.async_save=false", "data.max_train_examples=64",
        "data.max_eval_examples=8", "train.eval_every=100")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, shared_data):
    return tiny_gpt2_dir(tmp_path_factory.mktemp("model"), shared_data)


def snapshot(root: Path) -> dict:
    """Every file under ``root`` -> its content hash (what a failed command must not change)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def trained_run(model_dir, shared_data, run_dir: Path, steps: int = 2, *extra) -> Path:
    Trainer(lm_config(model_dir, shared_data, str(run_dir), *FAST, *extra, steps=steps)).fit()
    return run_dir


# -- 1. eval / predict / export need a checkpoint --------------------------------------------------------


def test_eval_predict_export_refuse_a_run_without_checkpoint(tmp_path, model_dir, shared_data, capsys):
    config = lm_config(model_dir, shared_data, str(tmp_path / "never"), *FAST)
    save_resolved(config, tmp_path / "never")  # a run directory that was never trained
    emptied = tmp_path / "emptied"
    save_resolved(config, emptied)
    (emptied / "checkpoints").mkdir()
    rows = tmp_path / "in.jsonl"
    rows.write_text('{"text": "hello"}\n')
    for run, missing in ((tmp_path / "never", "no checkpoints/ folder"), (emptied, "no finished checkpoint")):
        before = snapshot(tmp_path)
        for argv in (["eval", str(run)], ["export", str(run), str(tmp_path / "out")],
                     ["predict", str(run), "--input", str(rows), "--output", str(tmp_path / "pred.jsonl")]):
            assert cli_main(argv) == 1, argv
            err = capsys.readouterr().err
            assert str(run) in err and missing in err and "jaxkernel train" in err, err
        assert snapshot(tmp_path) == before  # no export, no predictions, nothing created
        assert not (tmp_path / "out").exists() and not (tmp_path / "pred.jsonl").exists()

    # A YAML config whose run directory does not exist (moved away): refused, and not created.
    moved = tmp_path / "moved.yaml"
    moved.write_text(yaml.safe_dump(config_to_dict(lm_config(model_dir, shared_data, str(tmp_path / "gone")))))
    assert cli_main(["eval", str(moved)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "gone").exists()
    with pytest.raises(NoCheckpoint):
        Trainer(config, roles=("train",), require_checkpoint=True)


# -- 2. the run directory given is the run ---------------------------------------------------------------


def test_copied_and_moved_run_directories_are_their_own_run(tmp_path, model_dir, shared_data, capsys):
    original = trained_run(model_dir, shared_data, tmp_path / "A", 2, "checkpoint.keep_last=2")
    copy = tmp_path / "B"
    shutil.copytree(original, copy, symlinks=True)
    untouched = snapshot(original)

    assert cli_main(["train", str(copy), "train.steps=3"]) == 0, capsys.readouterr().err
    assert f"run directory: {copy}" in capsys.readouterr().out
    assert snapshot(original) == untouched  # A neither continued nor lost its oldest checkpoint
    assert Checkpointer(copy / "checkpoints").all_steps() == [2, 3]
    assert load_config(copy / RESOLVED_NAME).train.run_dir == str(copy)

    moved = tmp_path / "moved"
    copy.rename(moved)
    assert cli_main(["eval", str(moved)]) == 0, capsys.readouterr().err
    assert "eval: loss=" in capsys.readouterr().out
    assert not copy.exists()  # the old path recorded in config.yaml was neither read nor recreated
    trainer = Trainer(load_config(moved / RESOLVED_NAME, [f"train.run_dir={moved}"]), roles=("train",))
    assert int(trainer.state.step) == 3

    # Naming another run_dir while giving a run directory is ambiguous: refused, nothing changes.
    before = snapshot(moved)
    assert cli_main(["train", str(moved), f"train.run_dir={original}", "train.steps=4"]) == 1
    assert "the run directory is the one given" in capsys.readouterr().err
    assert snapshot(moved) == before and snapshot(original) == untouched


# -- 3. every LoRA target name must match ------------------------------------------------------------------


def test_misspelt_lora_target_is_named_with_the_closest_names():
    import jaxkernel
    from flax import nnx
    from jaxkernel.models.bert import BERT_TASKS
    from tiny_models import BERT_CONFIGS

    model = BERT_TASKS["token-classification"](
        jaxkernel.BertConfig(**BERT_CONFIGS["h36-heads3"], num_labels=3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"'qurey' \(closest: query[,)].*matched no module") as err:
        apply_lora(model, LoraConfig(r=2, target_modules=["qurey", "value"]))
    assert "'value' (" not in str(err.value)  # only the misspelt entry is blamed
    assert not any("lora" in ".".join(map(str, p)).lower() for p, _ in nnx.iter_graph(model))  # no partial surgery
    apply_lora(model, LoraConfig(r=2, target_modules=["query", "value"]))  # the corrected list works


# -- 4. a CoNLL line with an extra column ---------------------------------------------------------------


def test_conll_line_with_an_extra_column_is_an_error(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("Paris\tB-LOC\nis\tO\n\nnice\tO\tEXTRA\n")
    with pytest.raises(DataError, match=r"train.txt:4: 3 columns, but line 1 of this file has 2.*EXTRA"):
        read_conll(path)
    four = tmp_path / "conll2003.txt"  # CoNLL-2003's four columns, consistently: fine
    four.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n")
    assert read_conll(four)[0]["tags"] == ["B-ORG", "O"]


# -- 5. a damaged latest checkpoint ---------------------------------------------------------------------------


def damage(step_dir: Path) -> None:
    data = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data, list(step_dir.rglob("*"))
    for p in data:
        p.write_bytes(b"\0garbage" * (p.stat().st_size // 8 + 1))


def test_damaged_latest_checkpoint_falls_back_and_is_kept(tmp_path, model_dir, shared_data, caplog, capsys):
    run = trained_run(model_dir, shared_data, tmp_path / "run", 2, "checkpoint.keep_last=2")
    damage(run / "checkpoints" / "2")
    damaged = snapshot(run / "checkpoints" / "2")

    with caplog.at_level(logging.WARNING):
        assert cli_main(["eval", str(run)]) == 0, capsys.readouterr().err
    assert "eval: loss=" in capsys.readouterr().out
    assert "step 2" in caplog.text and "unreadable" in caplog.text and "restored step 1" in caplog.text
    assert snapshot(run / "checkpoints" / "2") == damaged  # eval leaves the damaged step where it is

    caplog.clear()
    config = lm_config(model_dir, shared_data, str(run), *FAST, "checkpoint.keep_last=2", steps=4)
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(config)
        assert int(trainer.state.step) == 1
        trainer.fit()
    assert Checkpointer(run / "checkpoints").all_steps() == [3, 4]  # resumed from step 1, retention as usual
    assert snapshot(run / UNREADABLE_DIR / "2") == damaged  # moved aside, never deleted
    assert f"{UNREADABLE_DIR}/2" in caplog.text

    for step in (3, 4):
        damage(run / "checkpoints" / str(step))
    with pytest.raises(CheckpointUnreadable, match=r"step 4: .*step 3: .*left as they are"):
        Trainer(config, roles=("train",))
    assert cli_main(["eval", str(run)]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("jaxkernel eval: error: no checkpoint in")]
    assert len(errors) == 1 and "Traceback" not in err  # one sentence, not a TensorStore traceback


# -- 6. data without labels; a failed start is not a run ----------------------------------------------------


def test_tsv_without_label_column_is_refused_before_anything_is_written(tmp_path, model_dir, shared_data, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.tsv").write_text("sentence\n" + "good film\nbad film\n" * 20)  # enough rows to train on
    run = tmp_path / "run"
    overrides = lm_overrides(model_dir, shared_data, run, steps=1) + [
        "model.task=sequence-classification", "model.labels=[negative,positive]", f"data.source={data}",
        "peft.target_modules=[c_attn]",
    ]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(load_config(None, overrides))))
    assert cli_main(["train", str(path)]) == 1
    err = capsys.readouterr().err
    assert "train.tsv:2" in err and "no 'label'" in err and "data.columns" in err, err
    assert not run.exists()


def test_run_directory_without_checkpoints_accepts_a_corrected_config(tmp_path, model_dir, shared_data):
    run = tmp_path / "run"
    wrong = lm_config(model_dir, shared_data, str(run), *FAST, "data.source=/nonexistent/input.txt", steps=1)
    save_resolved(wrong, run)  # what a failed start leaves: its config, an empty checkpoints/ folder
    (run / "checkpoints").mkdir()
    right = lm_config(model_dir, shared_data, str(run), *FAST, steps=1)
    Trainer(right).fit()
    assert Checkpointer(run / "checkpoints").all_steps() == [1]
    assert load_config(run / RESOLVED_NAME).data.source == right.data.source

    # Once it holds a checkpoint it is a run: a config that does not fit is still refused.
    with pytest.raises(ValueError, match="holds another run"):
        Trainer(wrong)


def test_a_trainer_that_does_not_train_writes_nothing(tmp_path, model_dir, shared_data):
    Trainer(lm_config(model_dir, shared_data, str(tmp_path / "run"), *FAST, steps=1), roles=("train",))
    assert not (tmp_path / "run").exists()
