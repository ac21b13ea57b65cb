"""Multi-host readiness of ``jaxkernel train``.

* Two ``jaxkernel train`` processes on 127.0.0.1 (one CPU device each, gloo collectives,
  started through the ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``
  variables the CLI's train verb reads) train the tiny GPT-2 of ``train_fixtures`` as one
  job: one run directory, one directory per checkpoint step, metrics and console output
  from process 0 only; launched again with more steps, both resume from the checkpoint.
  This is how the processes of a TPU pod slice run (``tpu_scripts/launch.sh``).
* A ``gs://`` run directory is read and written through ``etils.epath`` (mocked here onto
  a local folder that, like an object store, refuses appends); checkpoints go to Orbax
  with the URL unchanged.
* ``configs/tpu_smoke.yaml`` loads and its batch divides the device counts of the
  TPU slices the docs use.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jaxkernel.config import config_to_dict, load_config
from train_fixtures import lm_config, tiny_gpt2_dir

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_two_processes(config_path: Path, cwd: Path, overrides=()) -> list[tuple[str, str]]:
    """Run ``jaxkernel train`` as processes 0 and 1 of one job; returns (stdout, stderr) of each."""
    port = _free_port()
    procs = []
    for pid in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") and k != "XLA_FLAGS"}
        env.update(
            XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid),
            PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        )
        procs.append(subprocess.Popen([sys.executable, "-m", "jaxkernel.cli", "train", str(config_path), *overrides],
                                      env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=600))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("the two train processes did not finish in 600 s")
    for pid, proc in enumerate(procs):
        assert proc.returncode == 0, f"process {pid} failed:\n{outputs[pid][1][-4000:]}"
    return outputs


def _train_steps(run_dir: Path) -> list[int]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if r["split"] == "train"]


@pytest.mark.slow
def test_two_processes_write_one_run_and_resume(tmp_path, shared_data):
    model_dir = tiny_gpt2_dir(tmp_path, shared_data)
    run_dir = tmp_path / "runs" / "two"
    config = lm_config(model_dir, shared_data, str(run_dir), "logging.progress_bar=true", steps=4)
    config_path = tmp_path / "two.yaml"
    config_path.write_text(yaml.safe_dump(config_to_dict(config)))

    (out0, err0), (out1, err1) = _train_two_processes(config_path, tmp_path)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["two"], "more than one run directory"
    assert {"config.yaml", "metrics.jsonl", "results.json", "checkpoints"} <= {p.name for p in run_dir.iterdir()}
    steps = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert steps == ["4"], f"expected one checkpoint (step 4), found {steps}"
    assert _train_steps(run_dir) == [1, 2, 3, 4], "each step must be logged once, by process 0"
    assert f"run directory: {run_dir}" in out0 and "perplexity=" in out0
    ours = [line for line in out1.splitlines() if not line.startswith("[Gloo]")]  # gloo's C++ prints its own
    assert ours == [], f"process 1 printed:\n{out1}"
    assert "train:" in err0 and "train:" not in err1, "the progress bar belongs to process 0 only"

    # Launched again with a longer schedule, the same job resumes from step 4.
    _train_two_processes(config_path, tmp_path, ["train.steps=8"])
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["two"]
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir()) == [4, 8]
    assert _train_steps(run_dir) == list(range(1, 9)), "the second launch must start at step 5"
    assert json.loads((run_dir / "results.json").read_text())["eval"]["perplexity"] > 0


class FakeBucket:
    """``gs://bucket/...`` mapped onto a local folder through epath's mock backend; no appends."""

    def __init__(self, root: Path):
        self.root = root
        self.appends = 0

    def local(self, path) -> str:
        text = os.fspath(path)
        return text.replace("gs://", str(self.root) + "/", 1) if text.startswith("gs://") else text

    def mocks(self) -> dict:
        def open_(fn, path, mode):
            if "a" in mode and os.fspath(path).startswith("gs://"):
                self.appends += 1
                raise OSError("object stores cannot append")
            return fn(self.local(path), mode)

        simple = {name: (lambda fn, path, *a, **k: fn(self.local(path), *a, **k))
                  for name in ("exists", "isdir", "listdir", "makedirs", "mkdir", "remove", "rmtree", "stat")}
        return {"open": open_, **simple}


@pytest.mark.slow
def test_gs_run_dir_goes_through_epath(tmp_path, shared_data, monkeypatch):
    from etils.epath import testing as epath_testing

    import jaxkernel.train.loop as loop

    bucket = FakeBucket(tmp_path / "bucket")
    seen = []

    class LocalCheckpointer(loop.Checkpointer):  # Orbax's gs:// I/O is TensorStore's: out of reach here
        def __init__(self, directory, **kwargs):
            seen.append(str(directory))
            super().__init__(bucket.local(directory), **kwargs)

    monkeypatch.setattr(loop, "Checkpointer", LocalCheckpointer)
    model_dir = tiny_gpt2_dir(tmp_path, shared_data)
    url = "gs://bucket/runs/lm"
    with epath_testing.mock_epath(**bucket.mocks()):
        loop.Trainer(lm_config(model_dir, shared_data, url, steps=4)).fit()
        resumed = loop.Trainer(lm_config(model_dir, shared_data, url, steps=6))
        assert int(resumed.state.step) == 4
        resumed.fit()
    local = tmp_path / "bucket" / "bucket" / "runs" / "lm"
    assert seen == [url + "/checkpoints"] * 2, "the checkpoint URL must reach Orbax unchanged"
    assert load_config(local / "config.yaml").train.run_dir == url
    assert _train_steps(local) == [1, 2, 3, 4, 5, 6]
    assert "eval" in json.loads((local / "results.json").read_text())
    assert bucket.appends == 0
    assert not (tmp_path / "gs:").exists() and not Path("gs:").exists(), "a gs:// path was used as a local path"


@pytest.mark.parametrize("devices", [1, 8, 16, 32])
def test_tpu_smoke_config_fits_tpu_slices(devices):
    config = load_config(REPO / "configs" / "tpu_smoke.yaml")
    assert config.train.batch_size % devices == 0
    assert config.model.path.startswith("package:") and "hub:wikiann:en" in config.data.source
    assert not config.logging.tensorboard
