"""Three SIGKILLs at chosen points (mid-step, mid-evaluation, mid-async-save), each resumed:
parameters, optimizer state and the logged curve equal an uninterrupted run's bit for bit,
and every checkpoint left on disk reads. The long random version is benchmarks/kill_anywhere.py."""

import signal
import sys
from pathlib import Path

import pytest

from test_trainer_resume import run_cli
from train_fixtures import lm_config, tiny_gpt2_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from kill_anywhere import check_checkpoints_readable, compare, saved_steps  # noqa: E402

pytestmark = pytest.mark.slow
EXTRA = ("train.eval_every=4", "checkpoint.every=2", "checkpoint.keep_last=2")


def test_three_kills_lose_nothing(tmp_path, shared_data):
    model_dir = tiny_gpt2_dir(tmp_path, shared_data)
    straight = lm_config(model_dir, shared_data, str(tmp_path / "straight"), *EXTRA)
    done = run_cli(straight)
    assert done.returncode == 0, done.stderr[-3000:]

    config = lm_config(model_dir, shared_data, str(tmp_path / "killed"), *EXTRA)
    run_dir = Path(config.train.run_dir)
    # (fault, the step whose checkpoint cannot exist afterwards). Saves are async: a kill may also
    # land before the previous checkpoint was finished; resuming then goes back further.
    for fault, lost in [("kill_in_step:3", 4), ("kill_in_eval:4", 4), ("kill_during_save:6", 6)]:
        killed = run_cli(config, {"JAXKERNEL_FAULT": fault})
        assert killed.returncode == -signal.SIGKILL, (fault, killed.stderr[-3000:])
        assert lost not in saved_steps(run_dir), (fault, saved_steps(run_dir))
        assert check_checkpoints_readable(run_dir) == [], fault
    resumed = run_cli(config)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert compare(Path(straight.train.run_dir), run_dir) == []
    assert check_checkpoints_readable(run_dir) == []
