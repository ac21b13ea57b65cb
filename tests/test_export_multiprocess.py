"""An export from a two-process job (one CPU device each, gloo) is written by process 0 only,
after a barrier, and both processes return the same path once the directory is complete."""

import json
import os
import textwrap
from pathlib import Path

import pytest
import yaml

from jaxkernel.config import config_to_dict
from test_multiprocess_train import _train_two_processes, _free_port
from train_fixtures import lm_config, tiny_gpt2_dir

REPO = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent(
    """
    import json, os, sys
    from jaxkernel.sharding.mesh import initialize_distributed
    assert initialize_distributed()
    import jax
    import jaxkernel.hf.peft_format as peft_format
    from jaxkernel.config import load_config
    from jaxkernel.train.loop import Trainer

    pid = jax.process_index()
    calls = []
    original = peft_format.save_merged
    def counting(model, directory, **kw):
        calls.append(str(directory))
        return original(model, directory, **kw)
    peft_format.save_merged = counting
    trainer = Trainer(load_config(sys.argv[1]), roles=("train",), require_checkpoint=True)
    path = trainer.export(sys.argv[2], merged=True)
    complete = (path / "config.json").exists() and (path / "model.safetensors").exists()
    with open(os.path.join(sys.argv[3], f"{pid}.json"), "w") as f:
        json.dump({"path": str(path), "writes": calls, "complete": complete}, f)
    """
)


@pytest.mark.slow
def test_export_from_two_processes(tmp_path, shared_data):
    import subprocess
    import sys

    model_dir = tiny_gpt2_dir(tmp_path, shared_data)
    config = lm_config(model_dir, shared_data, str(tmp_path / "run"), steps=2)
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config_to_dict(config)))
    _train_two_processes(config_path, tmp_path)

    port = _free_port()
    procs = []
    for pid in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") and k != "XLA_FLAGS"}
        env.update(XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
                   JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid),
                   PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(config_path), "out/merged", str(tmp_path)],
                                      env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for pid, proc in enumerate(procs):
        assert proc.returncode == 0, f"process {pid} failed:\n{logs[pid][-4000:]}"
    results = [json.loads((tmp_path / f"{pid}.json").read_text()) for pid in range(2)]
    assert results[0]["path"] == results[1]["path"] == "out/merged"
    assert results[0]["writes"] == ["out/merged"] and results[1]["writes"] == []
    assert results[0]["complete"] and results[1]["complete"]  # process 1 returned after the write
