"""What the train loop does not repeat: no second evaluation of the same state, no host sync per
step, no recompilation in a second identical run (persistent compilation cache)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

import jaxkernel.train.loop as loop_module
from jaxkernel.train.compile_cache import CACHE_ENV, cache_dir
from jaxkernel.train.loop import Trainer
from train_fixtures import lm_config, tiny_gpt2_dir

TESTS = Path(__file__).resolve().parent


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in open(run_dir / "metrics.jsonl")]


def test_the_same_state_is_never_evaluated_twice(tmp_path, shared_data, monkeypatch):
    calls = []
    real = loop_module.evaluate_split

    def counting(eval_step, state, loader, data, role, to_device):
        calls.append((role, int(state.step)))
        return real(eval_step, state, loader, data, role, to_device)

    monkeypatch.setattr(loop_module, "evaluate_split", counting)
    model_dir = tiny_gpt2_dir(tmp_path, shared_data)
    config = lm_config(model_dir, shared_data, str(tmp_path / "run"), "train.eval_every=3",
                       "checkpoint.every=null", steps=6)
    trainer = Trainer(config)
    results = trainer.fit()
    assert calls == [("eval", 3), ("eval", 6)]  # the last periodic eval is also the final one: run once
    assert trainer.evaluate("eval") == results["eval"] and len(calls) == 2  # same state: not run again
    steps = [r["step"] for r in records(tmp_path / "run") if r["split"] == "eval"]
    assert steps == [3, 6]


def test_no_implicit_device_to_host_transfer_between_logging_boundaries(tmp_path, shared_data):
    model_dir = tiny_gpt2_dir(tmp_path, shared_data)
    config = lm_config(model_dir, shared_data, str(tmp_path / "run"), "logging.every=3", "data.holdout_fraction=0",
                       "data.eval_split=null", "checkpoint.every=null", "checkpoint.async_save=false", steps=6)
    trainer = Trainer(config)
    trainer.fit()  # compiles, and warms what saving needs
    more = lm_config(model_dir, shared_data, str(tmp_path / "run"), "logging.every=3", "data.holdout_fraction=0",
                     "data.eval_split=null", "checkpoint.every=null", "checkpoint.async_save=false", steps=12)
    trainer = Trainer(more)  # resumes at step 6
    trainer._save = lambda step, metrics=None: None  # checkpoint I/O is not the loop's business
    with jax.transfer_guard_device_to_host("disallow"):  # float(x), bool(x), np.asarray(x) would raise
        trainer.fit()  # only explicit jax.device_get at logging boundaries
    train = [r for r in records(tmp_path / "run") if r["split"] == "train"]
    assert [r["step"] for r in train][-2:] == [9, 12]
    assert all(isinstance(r["loss"], float) and r["loss"] > 0 for r in train)  # the window's mean loss


def test_compile_times_are_logged_per_bucket(tmp_path, shared_data):
    model_dir = tiny_gpt2_dir(tmp_path, shared_data)
    config = lm_config(model_dir, shared_data, str(tmp_path / "run"), "checkpoint.every=null", steps=4)
    trainer = Trainer(config)
    trainer.fit()
    compiled = [r for r in records(tmp_path / "run") if r["split"] == "compile"]
    assert {(r["program"], r["length"]) for r in compiled} == {("train", 32), ("eval", 32)}
    assert all(r["seconds"] > 0 for r in compiled)
    assert trainer.compile_cache == Path(os.environ[CACHE_ENV])


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, "off")
    assert cache_dir() is None
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "jaxkernel" / "xla"


RUN = """
import json, sys
sys.path.insert(0, {tests!r})
from train_fixtures import lm_config
from jaxkernel.train.loop import Trainer
from pathlib import Path
trainer = Trainer(lm_config(Path({model!r}), Path({data!r}), {run!r}, "checkpoint.every=null", steps=4))
trainer.fit()
print(json.dumps(trainer.compile_times))
"""


@pytest.mark.slow
def test_second_identical_run_loads_every_program_from_the_cache(tmp_path, shared_data):
    model_dir = tiny_gpt2_dir(tmp_path, shared_data)
    env = {**os.environ, CACHE_ENV: str(tmp_path / "xla")}
    runs = []
    for name in ("first", "second"):
        code = RUN.format(tests=str(TESTS), model=str(model_dir), data=str(shared_data), run=str(tmp_path / name))
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert {(r["program"], r["length"]) for r in first} == {(r["program"], r["length"]) for r in second}
    assert all(r["cache_hits"] == 0 for r in first)
    assert all(r["cache_hits"] >= 1 for r in second)  # nothing compiled: every program read from disk
    assert sum(r["seconds"] for r in second) < 0.5 * sum(r["seconds"] for r in first)
