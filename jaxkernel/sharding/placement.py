"""Putting models and batches on a mesh without ever holding them whole on one device.

* :func:`create_sharded` builds a model *born sharded*: ``nnx.eval_shape`` gives
  the abstract model, the rules give every variable a NamedSharding, and a
  ``jax.jit``-ed init with those ``out_shardings`` makes each device compute
  only its own shards.
* :func:`from_pretrained_sharded` loads Hugging Face weights straight into their
  shards: the mapping engine (``jaxkernel.hf.mapping``) fills an abstract model
  with host numpy arrays, then ``jax.make_array_from_callback`` copies to each
  device only the slice it owns. Heads absent from the checkpoint are
  initialised sharded.
* :func:`shard_batch` turns each host's local batch into one global array with
  ``jax.make_array_from_process_local_data`` (multi-host data loading).

Example::

    mesh = make_mesh(MeshConfig((1, -1, 2)))
    model = from_pretrained_sharded("gpt2-xl/", mesh, "fsdp_tp", task="causal-lm")
    model_def, state = init_train_state(model, tx, mesh=mesh, rules="fsdp_tp")
    state, metrics = train_step(state, shard_batch(local_batch, mesh))
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jaxkernel.sharding import rules as sharding_rules

log = logging.getLogger(__name__)


def model_shardings(abstract_model: nnx.Module, mesh: Mesh, rules, *, notes: list | None = None):
    """(graphdef, NamedSharding state) for an abstract (or concrete) model."""
    graphdef, state = nnx.split(abstract_model)
    return graphdef, sharding_rules.tree_shardings(state, mesh, rules, notes=notes)


def create_sharded(model_fn: Callable[[], nnx.Module], mesh: Mesh, rules="fsdp") -> nnx.Module:
    """Build ``model_fn()`` directly in its shards on ``mesh``.

    Args:
      model_fn: builds the model, e.g. ``lambda: Gpt2LMHeadModel(cfg, rngs=nnx.Rngs(0))``.
      mesh: from ``make_mesh``.
      rules: preset name or ShardingRules.

    Returns:
      The model, every variable a global array with its preset's sharding. The
      values equal an unsharded ``model_fn()`` (partitionable threefry RNG).
    """
    rules = sharding_rules.get_rules(rules)
    abstract = nnx.eval_shape(model_fn)
    sharding_rules.check_model(getattr(abstract, "config", None), rules, mesh)
    graphdef, shardings = model_shardings(abstract, mesh, rules)

    state = jax.jit(lambda: nnx.state(model_fn()), out_shardings=shardings)()
    return nnx.merge(graphdef, state)


class _Slot:
    """Stands in for an abstract parameter so the HF mapping engine can 'fill' it.

    ``import_tensors`` reads ``shape``/``dtype`` and assigns ``var[...] = array``;
    the slot just keeps the host array, so nothing is allocated on a device.
    """

    def __init__(self, shape, dtype):
        self.shape, self.dtype, self.value = tuple(shape), np.dtype(dtype), None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __setitem__(self, key, value):
        if key is not Ellipsis:
            raise TypeError("a parameter slot only supports slot[...] = array")
        self.value = value


def place_host_array(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array whose devices each receive only their slice of ``value``."""
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def from_pretrained_sharded(
    path_or_id: str | os.PathLike,
    mesh: Mesh,
    rules="fsdp",
    *,
    task: str | None = None,
    num_labels: int | None = None,
    labels=None,
    dtype: str | None = None,
    seed: int = 0,
    revision: str | None = None,
    strict: bool = False,
) -> nnx.Module:
    """``jaxkernel.from_pretrained`` that loads each weight straight into its shards.

    Same arguments as ``from_pretrained`` plus ``mesh`` and ``rules``. The
    checkpoint is read on the host (each host reads it on multi-host runs);
    devices receive only their slices.
    """
    from jaxkernel.hf import io
    from jaxkernel.hf.pretrained import config_from_pretrained, load_tensors

    rules = sharding_rules.get_rules(rules)
    overrides = {"num_labels": num_labels, "labels": labels}
    if dtype is not None:
        overrides["dtype"] = dtype
    family, config, default_task, directory = config_from_pretrained(path_or_id, revision=revision, strict=strict, **overrides)
    task = task or default_task
    model_fn = lambda: family.build(task, config, seed=seed)  # noqa: E731
    tensors, source = io.read_weights(directory)
    return load_sharded(model_fn, tensors, mesh, rules, source=str(directory / source))


def load_sharded(
    model_fn: Callable[[], nnx.Module],
    tensors: Mapping[str, np.ndarray],
    mesh: Mesh,
    rules="fsdp",
    *,
    source: str = "tensors",
) -> nnx.Module:
    """Build ``model_fn()`` sharded on ``mesh`` with HF-named ``tensors`` placed into it.

    The HF mapping table and its checks (exactly-once use, shapes, tied heads)
    run unchanged on an abstract model; parameters the tensors do not cover
    (new task heads) are initialised in their shards.
    """
    from jaxkernel.hf.pretrained import load_tensors

    rules = sharding_rules.get_rules(rules)
    abstract = nnx.eval_shape(model_fn)
    sharding_rules.check_model(getattr(abstract, "config", None), rules, mesh)
    graphdef, shardings = model_shardings(abstract, mesh, rules)
    params = [v for _, v in nnx.iter_graph(abstract) if isinstance(v, nnx.Param)]
    for var in params:
        value = var.get_value()
        var.set_value(_Slot(value.shape, value.dtype))
    load_tensors(abstract, dict(tensors), source=source)

    _, abstract_state = nnx.split(abstract)
    flat_values = dict(nnx.to_flat_state(abstract_state))
    flat_shardings = dict(nnx.to_flat_state(shardings))
    missing = [path for path, var in flat_values.items() if not (isinstance(var.get_value(), _Slot) and var.get_value().value is not None)]

    initialised = {}
    if missing:  # new heads and RNG streams: initialise just those, in their shards (XLA drops the rest)

        def init_missing():
            fresh = dict(nnx.to_flat_state(nnx.state(model_fn())))
            return [fresh[path] for path in missing]

        values = jax.jit(init_missing, out_shardings=[flat_shardings[path] for path in missing])()
        initialised = dict(zip(missing, values))

    placed = []
    for path, var in flat_values.items():
        if path in initialised:
            placed.append((path, initialised[path]))
        else:
            sharding = flat_shardings[path].get_value()
            placed.append((path, var.replace(place_host_array(var.get_value().value, sharding))))
    return nnx.merge(graphdef, nnx.from_flat_state(placed))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    return NamedSharding(mesh, sharding_rules.batch_spec(ndim))


def shard_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh, *, microbatches: int = 1) -> dict[str, jax.Array]:
    """This host's rows -> global arrays split over the data axes.

    Every process passes its own ``local_batch`` (the same number of rows on
    each); the global batch is their concatenation in process order. Checks
    that the global batch divides over ``data * fsdp`` (and microbatches).
    """
    sizes = {len(np.shape(v)) and np.shape(v)[0] for v in local_batch.values()}
    if len(sizes) != 1:
        raise ValueError(f"batch arrays disagree on the batch size: {sorted(sizes)}")
    global_size = sizes.pop() * jax.process_count()
    sharding_rules.check_batch(global_size, mesh, microbatches)
    return {
        key: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(value)), np.asarray(value))
        for key, value in local_batch.items()
    }
