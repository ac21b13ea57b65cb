"""Sharded loads read only the slices their devices hold, and give the plain load's parameters.

The fast tests run on the 8 simulated devices of one process: every device's slice is
read once (a sharded kernel is never read whole), through the mapping table's
transforms. The slow test runs two processes of 4 devices each on one 8-device mesh:
each process reads about half of the sharded bytes, and never the whole checkpoint.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
import transformers
from flax import nnx

from jaxkernel.hf import io
from jaxkernel.hf.pretrained import from_pretrained
from jaxkernel.sharding.mesh import MeshConfig, make_mesh
from jaxkernel.sharding.placement import from_pretrained_sharded
from tiny_models import _randomise

REPO = Path(__file__).resolve().parents[1]


def _bert_dir(root: Path) -> Path:
    config = transformers.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=3)
    _randomise(transformers.BertForTokenClassification(config), 0).save_pretrained(root / "bert")
    return root / "bert"


def _gpt2_dir(root: Path) -> Path:
    config = transformers.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    _randomise(transformers.GPT2LMHeadModel(config), 1).save_pretrained(root / "gpt2")
    return root / "gpt2"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("sliced")
    return {"bert": _bert_dir(root), "gpt2": _gpt2_dir(root)}


def _values(model) -> dict:
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        value = var.get_value()
        if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            value = jax.random.key_data(value)
        out[".".join(map(str, path))] = value
    return out


class CountingReads:
    """Wraps io.open_weights: records (key, index, bytes) of every read."""

    def __init__(self, monkeypatch):
        self.reads, self.readers = [], []
        original = io.open_weights

        def counting(directory):
            reader, name = original(directory)
            for tensor in reader.values():
                tensor.read = self._wrap(tensor)
            self.readers.append(reader)
            return reader, name

        monkeypatch.setattr(io, "open_weights", counting)

    def _wrap(self, tensor):
        read = tensor.read

        def wrapped(index=Ellipsis):
            value = read(index)
            self.reads.append((tensor.key, index, value.nbytes))
            return value

        return wrapped


@pytest.mark.parametrize("family", ["bert", "gpt2"])
@pytest.mark.parametrize("preset,shape", [("fsdp", (1, 8, 1)), ("tp", (2, 1, 4))])
def test_sliced_sharded_load_equals_plain_load(checkpoints, family, preset, shape):
    directory = checkpoints[family]
    expected = _values(from_pretrained(directory))
    mesh = make_mesh(MeshConfig(shape))
    sharded = from_pretrained_sharded(directory, mesh, preset)
    actual = _values(sharded)
    assert actual.keys() == expected.keys()
    for path, value in actual.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(expected[path]), err_msg=path)
    # and the weights really are split: some parameter holds only a fraction per device
    fractions = [
        max(s.data.size for s in v.addressable_shards) / v.size
        for v in actual.values() if isinstance(v, jax.Array) and v.size > 1
    ]
    assert min(fractions) <= 1 / 4


def test_plain_load_equals_transformers(checkpoints):
    """The abstract-then-fill plain load still holds exactly the checkpoint's tensors."""
    directory = checkpoints["gpt2"]
    model = from_pretrained(directory)
    hf = transformers.GPT2LMHeadModel.from_pretrained(directory)
    np.testing.assert_array_equal(np.asarray(model.transformer.h[1].mlp.c_fc.kernel.get_value()),
                                  hf.transformer.h[1].mlp.c_fc.weight.detach().numpy())
    np.testing.assert_array_equal(np.asarray(model.transformer.wte.embedding.get_value()),
                                  hf.transformer.wte.weight.detach().numpy())


def test_each_device_reads_only_its_slice(checkpoints, monkeypatch):
    """Under fsdp a sharded kernel is read in 8 slices of 1/8 (a transposed Linear: the
    transposed slice), replicated tensors once; no byte is read twice."""
    counter = CountingReads(monkeypatch)
    directory = checkpoints["bert"]
    mesh = make_mesh(MeshConfig((1, 8, 1)))
    model = from_pretrained_sharded(directory, mesh, "fsdp")
    reader = counter.readers[-1]
    total = sum(t.nbytes for t in reader.values())
    assert reader.bytes_read == sum(n for _, _, n in counter.reads)
    # the classifier head of a token-cls checkpoint is read too; nothing is read twice
    assert reader.bytes_read <= total
    query = "bert.encoder.layer.0.attention.self.query.weight"  # torch (out, in); ours (in, out) split on in
    reads = [(index, n) for key, index, n in counter.reads if key == query]
    size = reader[query].nbytes
    assert len(reads) == 8 and all(n == size // 8 for _, n in reads), reads
    assert {index[1].start for index, _ in reads} == set(range(0, 32, 4))  # the torch *column* ranges
    assert all(index[0] == slice(None) or index[0] == slice(None, None, None) for index, _ in reads)
    whole = [key for key, index, n in counter.reads if n == reader[key].nbytes and reader[key].nbytes > 4 * 96]
    sharded_keys = {path for path, v in _values(model).items()
                    if isinstance(v, jax.Array) and max(s.data.size for s in v.addressable_shards) < v.size}
    assert not any(k.endswith(".weight") and "LayerNorm" not in k and "embeddings" not in k for k in whole), whole
    assert sharded_keys


def test_plain_load_reads_each_tensor_once(checkpoints, monkeypatch):
    counter = CountingReads(monkeypatch)
    from_pretrained(checkpoints["gpt2"])
    keys = [key for key, _, _ in counter.reads]
    assert len(keys) == len(set(keys))
    assert counter.readers[-1].bytes_read == sum(t.nbytes for t in counter.readers[-1].values())


WORKER = textwrap.dedent(
    """
    import json, os, sys
    from jaxkernel.sharding.mesh import initialize_distributed, make_mesh, MeshConfig
    assert initialize_distributed()
    import jax
    from jaxkernel.hf import io
    from jaxkernel.sharding.placement import from_pretrained_sharded

    readers = []
    original = io.open_weights
    def counting(directory):
        reader, name = original(directory)
        readers.append(reader)
        return reader, name
    io.open_weights = counting
    mesh = make_mesh(MeshConfig((1, 8, 1)))
    model = from_pretrained_sharded(os.environ["MODEL_DIR"], mesh, "fsdp")
    kernel = model.transformer.h[0].mlp.c_fc.kernel.get_value()
    total = sum(t.nbytes for t in readers[-1].values())
    out = {"bytes_read": readers[-1].bytes_read, "total": total, "local": jax.local_device_count(),
           "shards": sorted(s.index[0].start or 0 for s in kernel.addressable_shards)}
    with open(os.path.join(os.environ["OUT_DIR"], f"{jax.process_index()}.json"), "w") as f:
        json.dump(out, f)
    """
)


@pytest.mark.slow
def test_two_hosts_each_read_about_half(checkpoints, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for pid in range(2):
        env = dict(os.environ)
        env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
                   JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid),
                   PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
                   MODEL_DIR=str(checkpoints["gpt2"]), OUT_DIR=str(tmp_path))
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER], env=env, cwd=tmp_path,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=600)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("workers did not finish in 600 s")
    for pid, proc in enumerate(procs):
        assert proc.returncode == 0, f"process {pid} failed:\n{logs[pid][-4000:]}"
    results = [json.loads((tmp_path / f"{pid}.json").read_text()) for pid in range(2)]
    for r in results:
        assert r["local"] == 4
        # fsdp splits every weight's embed dim 8 ways: a host with 4 devices reads half of those
        # (plus the small replicated vectors), never the whole checkpoint
        assert r["bytes_read"] < 0.6 * r["total"], r
    assert results[0]["shards"] != results[1]["shards"]


def test_column_slices_read_in_row_blocks_give_the_same_values(checkpoints, monkeypatch):
    """A slice across columns is read a few rows at a time (each block's file mapping dropped):
    with tiny blocks the sharded load still equals the plain one."""
    expected = _values(from_pretrained(checkpoints["bert"]))
    monkeypatch.setattr(io, "_BLOCK_BYTES", 256)
    actual = _values(from_pretrained_sharded(checkpoints["bert"], make_mesh(MeshConfig((1, 8, 1))), "fsdp"))
    for path, value in actual.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(expected[path]), err_msg=path)
    tensor = io.open_weights(checkpoints["bert"])[0]["bert.encoder.layer.0.attention.self.query.weight"]
    np.testing.assert_array_equal(tensor.read((slice(1, 30), slice(4, 8))), tensor.read()[1:30, 4:8])
