"""Checkpoints resume bit-identically after SIGKILL, survive a crash mid-save,
restore onto other meshes, and refuse another run's directory."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import yaml

from jaxkernel.config import ConfigError, config_to_dict
from jaxkernel.train.loop import FAULT_ENV, Trainer
from train_fixtures import lm_config, tiny_gpt2_dir

pytestmark = pytest.mark.slow


def run_cli(config, env_extra=None):
    """``jaxkernel train`` in a fresh process on one CPU device."""
    path = config.train.run_dir + ".yaml"
    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(config), f)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "jaxkernel.cli", "train", path], env=env,
                          capture_output=True, text=True, timeout=900)


def losses(run_dir):
    lines = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))]
    return {r["step"]: r["loss"] for r in lines if r["split"] == "train"}


def final_params(config):
    trainer = Trainer(config, roles=("train",))
    return jax.tree.map(np.asarray, trainer.state.params), int(trainer.state.step)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("resume")
    model_dir = tiny_gpt2_dir(root, shared_data)
    straight = lm_config(model_dir, shared_data, str(root / "straight"))
    result = run_cli(straight)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, model_dir, straight, final_params(straight)


def assert_same_params(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(x, y)


def test_resume_after_sigkill_is_bit_identical(setup, shared_data):
    root, model_dir, straight, (params, step) = setup
    config = lm_config(model_dir, shared_data, str(root / "killed"))
    killed = run_cli(config, {FAULT_ENV: "kill_after_save:4"})
    assert killed.returncode == -signal.SIGKILL
    assert max(losses(config.train.run_dir)) == 4
    resumed = run_cli(config)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(config.train.run_dir) == losses(straight.train.run_dir)  # the whole curve, exactly
    again, again_step = final_params(config)
    assert again_step == step == 8
    assert_same_params(again, params)


def test_crash_during_save_keeps_the_last_good_checkpoint(setup, shared_data):
    root, model_dir, straight, (params, _) = setup
    config = lm_config(model_dir, shared_data, str(root / "crashed"))
    crashed = run_cli(config, {FAULT_ENV: "kill_during_save:8"})
    assert crashed.returncode == -signal.SIGKILL
    steps = sorted(p for p in os.listdir(os.path.join(config.train.run_dir, "checkpoints")) if p.isdigit())
    assert steps == ["4"], steps  # the interrupted step-8 save left no finished checkpoint
    resumed = run_cli(config)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_params(final_params(config)[0], params)


def test_restore_onto_other_meshes(tmp_path, shared_data):
    model_dir = tiny_gpt2_dir(tmp_path, shared_data)
    run_dir = str(tmp_path / "fsdp")
    fsdp = lm_config(model_dir, shared_data, run_dir, "mesh.preset=fsdp", "mesh.shape=[1,8,1]", "peft.method=none",
                     steps=2)
    trainer = Trainer(fsdp)
    trainer.fit()
    assert trainer.mesh is not None and trainer.mesh.shape["fsdp"] == 8
    saved = jax.tree.map(np.asarray, trainer.state.params)
    wte = trainer.state.params["transformer"]["wte"]["embedding"][...]
    assert len(wte.sharding.device_set) == 8
    for extra in (["mesh.shape=[1,1,1]"], ["mesh.preset=tp", "mesh.shape=[2,1,4]"]):
        restored = Trainer(lm_config(model_dir, shared_data, run_dir, "peft.method=none", *extra, steps=2),
                           roles=("train",))
        assert int(restored.state.step) == 2
        assert_same_params(jax.tree.map(np.asarray, restored.state.params), saved)


def test_incompatible_run_directory_is_refused_and_untouched(tmp_path, shared_data):
    model_dir = tiny_gpt2_dir(tmp_path, shared_data)
    run_dir = tmp_path / "run"
    Trainer(lm_config(model_dir, shared_data, str(run_dir), steps=1)).fit()
    before = sorted(str(p) for p in run_dir.rglob("*"))
    other = lm_config(model_dir, shared_data, str(run_dir), "peft.method=prefix", steps=1)
    with pytest.raises(ConfigError, match=r"holds another run.*peft"):
        Trainer(other)
    assert sorted(str(p) for p in run_dir.rglob("*")) == before


def test_resume_from_a_checkpoint_between_logging_steps_logs_the_same_curve(tmp_path, shared_data, monkeypatch):
    """Checkpoints every 3 steps, loss logged every 2: a crash right after the step-3 save resumes
    with the same logged means (the on-device loss window closes at each checkpoint)."""
    from jaxkernel.train import loop

    model_dir = tiny_gpt2_dir(tmp_path, shared_data)
    extra = ("logging.every=2", "checkpoint.every=3", "checkpoint.async_save=false", "train.eval_every=100")
    straight = lm_config(model_dir, shared_data, str(tmp_path / "straight"), *extra, steps=6)
    Trainer(straight).fit()
    config = lm_config(model_dir, shared_data, str(tmp_path / "crashed"), *extra, steps=6)

    def crash(point, step, wait=None):
        if (point, step) == ("kill_after_save", 3):
            raise KeyboardInterrupt("simulated preemption")

    monkeypatch.setattr(loop, "_fault", crash)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config).fit()
    monkeypatch.undo()
    Trainer(config).fit()
    assert losses(config.train.run_dir) == losses(straight.train.run_dir)
    assert sorted(losses(straight.train.run_dir)) == [2, 3, 4, 6]  # every 2 steps, and at the step-3 checkpoint
