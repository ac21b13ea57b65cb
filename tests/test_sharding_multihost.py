"""Two processes on 127.0.0.1 (2 simulated CPU devices each) train like one process.

Each child runs ``jax.distributed.initialize`` (through
``jaxkernel.sharding.initialize_distributed`` and the ``JAX_*`` environment
variables) with gloo CPU collectives, builds the model born sharded over a
(data=1, fsdp=2, tensor=2) mesh that spans both processes, feeds only its own
half of the batch (``make_array_from_process_local_data``) and runs three train
steps. The losses must equal an unsharded run in this (parent) process.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    from jaxkernel.sharding.mesh import initialize_distributed, make_mesh, MeshConfig
    assert initialize_distributed()
    import jax
    from jax.experimental import multihost_utils
    sys.path.insert(0, os.environ["TESTS_DIR"])
    from test_sharding_multihost import BATCH, STEPS, build, tx
    from jaxkernel.sharding.placement import create_sharded, shard_batch
    from jaxkernel.train.step import init_train_state, make_train_step

    pid, n = jax.process_index(), jax.process_count()
    mesh = make_mesh(MeshConfig((1, 2, 2)))
    model = create_sharded(build, mesh, "fsdp_tp")
    rows = len(BATCH["input_ids"]) // n
    local = {k: v[pid * rows:(pid + 1) * rows] for k, v in BATCH.items()}
    batch = shard_batch(local, mesh)
    gathered = multihost_utils.process_allgather(batch["input_ids"], tiled=True)
    model_def, state = init_train_state(model, tx(), mesh=mesh, rules="fsdp_tp", seed=3)
    step = make_train_step(model_def, tx())
    losses = []
    for _ in range(STEPS):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    kernel = state.params["transformer"]["h"][0]["mlp"]["c_fc"]["kernel"].get_value()
    checksum = float(jax.jit(lambda x: (x * x).sum(), out_shardings=jax.sharding.NamedSharding(mesh, jax.P()))(kernel))
    out = {"process": pid, "processes": n, "devices": jax.device_count(), "local_devices": jax.local_device_count(),
           "batch_matches": bool(np.array_equal(np.asarray(gathered), BATCH["input_ids"])),
           "losses": losses, "checksum": checksum}
    with open(os.path.join(os.environ["OUT_DIR"], f"{pid}.json"), "w") as f:
        json.dump(out, f)
    """
)

STEPS = 3
_rng = np.random.RandomState(0)
BATCH = {"input_ids": _rng.randint(3, 64, (4, 12)).astype(np.int32), "attention_mask": np.ones((4, 12), np.int32)}
BATCH["attention_mask"][3, 8:] = 0


def build():
    from flax import nnx

    from jaxkernel.models.gpt2 import Gpt2Config, Gpt2LMHeadModel

    return Gpt2LMHeadModel(Gpt2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4, n_positions=16,
                                      bos_token_id=1, eos_token_id=2), rngs=nnx.Rngs(0))


def tx():
    import optax

    return optax.adamw(1e-3, eps=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    port = _free_port()
    procs = []
    for pid in range(2):
        env = dict(os.environ)
        env.update(
            XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid),
            PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
            TESTS_DIR=str(TESTS), OUT_DIR=str(tmp_path),
        )
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER], env=env, cwd=tmp_path,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=900)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("multi-host workers did not finish in 900 s")
    for pid, proc in enumerate(procs):
        assert proc.returncode == 0, f"process {pid} failed:\n{logs[pid][-4000:]}"
    results = [json.loads((tmp_path / f"{pid}.json").read_text()) for pid in range(2)]

    from jaxkernel.train.step import init_train_state, make_train_step

    model_def, state = init_train_state(build(), tx(), seed=3)
    step = make_train_step(model_def, tx())
    expected = []
    for _ in range(STEPS):
        state, metrics = step(state, BATCH)
        expected.append(float(metrics["loss"]))
    kernel = np.asarray(state.params["transformer"]["h"][0]["mlp"]["c_fc"]["kernel"].get_value())

    for r in results:
        assert (r["processes"], r["devices"], r["local_devices"]) == (2, 4, 2)
        assert r["batch_matches"], "the global batch is not the concatenation of the local batches"
        np.testing.assert_allclose(r["losses"], expected, rtol=1e-5)
        np.testing.assert_allclose(r["checksum"], float((kernel * kernel).sum()), rtol=1e-5)
    assert results[0]["losses"] == results[1]["losses"]
