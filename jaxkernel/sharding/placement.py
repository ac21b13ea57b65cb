"""Putting models and batches on a mesh without ever holding them whole on one device.

* :func:`create_sharded` builds a model *born sharded*: ``nnx.eval_shape`` gives
  the abstract model, the rules give every variable a NamedSharding, and a
  ``jax.jit``-ed init with those ``out_shardings`` makes each device compute
  only its own shards.
* :func:`from_pretrained_sharded` loads Hugging Face weights straight into their
  shards: the mapping engine (``jaxkernel.hf.mapping``) fills an abstract model
  with lazy checkpoint tensors, then ``jax.make_array_from_callback`` reads from the
  safetensors file only the slice each of this process's devices owns (through the
  table's transforms: a transposed torch Linear reads the transposed slice). Heads
  absent from the checkpoint are initialised sharded. :func:`load_sharded` without a
  mesh is also how plain ``from_pretrained`` loads (abstract model, then fill).
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

    ``import_tensors`` reads ``shape``/``dtype`` and assigns ``var[...] = tensor``;
    the slot keeps the (lazy) tensor, so nothing is read or allocated yet.
    """

    takes_lazy = True  # import_tensors hands over a TransformedTensor instead of reading it

    def __init__(self, shape, dtype):
        self.shape, self.dtype, self.value = tuple(shape), np.dtype(dtype), None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __setitem__(self, key, value):
        if key is not Ellipsis:
            raise TypeError("a parameter slot only supports slot[...] = array")
        self.value = value


def _index_key(index) -> tuple:
    return tuple((s.start, s.stop, s.step) if isinstance(s, slice) else s for s in index)


def place_host_array(value, sharding: NamedSharding | None = None) -> jax.Array:
    """A global array whose devices each receive only their slice of ``value``.

    ``value`` is a numpy array or a tensor with ``read(index)`` (a lazy checkpoint
    tensor): then only the slices of this process's devices are read, each once
    (replicas share it). ``sharding`` None: one array on the default device.
    """
    read = value.read if hasattr(value, "read") else (lambda index, v=np.asarray(value): v[index])
    if sharding is None:
        return jax.device_put(read(Ellipsis))
    cache: dict = {}

    def piece(index):
        key = _index_key(index)
        if key not in cache:
            cache[key] = read(tuple(index))
        return cache[key]

    return jax.make_array_from_callback(tuple(value.shape), sharding, piece)


def _trace_model(model_fn: Callable[[], nnx.Module]):
    """(abstract model, init) from one trace of ``model_fn``.

    ``init(paths, shardings)`` computes only the variables at ``paths`` (flat state paths):
    the traced program is cut down to what they depend on before it is compiled, so a
    new head or the RNG streams cost a tiny program, not the whole random initialisation.
    Values equal ``jax.jit(model_fn)``'s (the same threefry computations).
    """
    from jax._src import core
    from jax._src.interpreters import partial_eval as pe

    box = {}

    def traced():
        box["graphdef"], state = nnx.split(model_fn())
        return state

    closed, shapes = jax.make_jaxpr(traced, return_shape=True)()
    abstract = nnx.merge(box["graphdef"], shapes)
    order = [path for path, _ in nnx.to_flat_state(shapes)]  # the order of the traced outputs

    def init(paths, shardings=None):
        wanted = set(paths)
        used = [path in wanted for path in order]
        jaxpr, used_consts = pe.dce_jaxpr(pe.convert_constvars_jaxpr(closed.jaxpr), used)
        consts = [c for c, keep in zip(closed.consts, used_consts) if keep]
        computed = [p for p in order if p in wanted]
        out_shardings = None
        if shardings is not None:
            by_path = dict(zip(paths, shardings))
            out_shardings = [by_path[p].get_value() if isinstance(by_path[p], nnx.Variable) else by_path[p]
                             for p in computed]
        values = jax.jit(lambda *c: core.eval_jaxpr(jaxpr, [], *c), out_shardings=out_shardings)(*consts)
        by_path = dict(zip(computed, values))
        return [by_path[p] for p in paths]

    return abstract, init


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

    Same arguments as ``from_pretrained`` plus ``mesh`` and ``rules``. Each process
    reads from the checkpoint only the slices its own devices hold (safetensors;
    a ``pytorch_model.bin`` is read whole); no process ever holds the whole model.
    """
    from jaxkernel.hf import io
    from jaxkernel.hf.pretrained import config_from_pretrained

    rules = sharding_rules.get_rules(rules)
    overrides = {"num_labels": num_labels, "labels": labels}
    if dtype is not None:
        overrides["dtype"] = dtype
    family, config, default_task, directory = config_from_pretrained(path_or_id, revision=revision, strict=strict, **overrides)
    task = task or default_task
    family.check_task(task)
    model_fn = lambda: family.build(task, config, seed=seed)  # noqa: E731
    tensors, source = io.open_weights(directory)
    return load_sharded(model_fn, tensors, mesh, rules, source=str(directory / source))


def load_sharded(
    model_fn: Callable[[], nnx.Module],
    tensors: Mapping[str, np.ndarray],
    mesh: Mesh | None,
    rules="fsdp",
    *,
    source: str = "tensors",
) -> nnx.Module:
    """Build ``model_fn()`` abstractly and place HF-named ``tensors`` into it (sharded on ``mesh``).

    The one loading path: ``from_pretrained`` calls it with ``mesh=None`` (every tensor
    whole on the default device), ``from_pretrained_sharded`` with a mesh. The model is
    never initialised at random and overwritten: ``nnx.eval_shape`` gives the shapes,
    the HF mapping table and its checks (exactly-once use, shapes, tied heads) run on
    that abstract model, and each parameter is placed from its (lazy) tensor. Only what
    the tensors do not cover (new task heads, RNG streams) is initialised, in its shards.
    """
    from jaxkernel.hf.pretrained import load_tensors

    abstract, init = _trace_model(model_fn)
    if mesh is not None:
        rules = sharding_rules.get_rules(rules)
        sharding_rules.check_model(getattr(abstract, "config", None), rules, mesh)
        graphdef, shardings = model_shardings(abstract, mesh, rules)
        flat_shardings = dict(nnx.to_flat_state(shardings))
    else:
        graphdef, flat_shardings = nnx.graphdef(abstract), None
    params = [v for _, v in nnx.iter_graph(abstract) if isinstance(v, nnx.Param)]
    for var in params:
        value = var.get_value()
        var.set_value(_Slot(value.shape, value.dtype))
    load_tensors(abstract, dict(tensors), source=source)

    _, abstract_state = nnx.split(abstract)
    flat_values = dict(nnx.to_flat_state(abstract_state))
    missing = [path for path, var in flat_values.items()
               if not (isinstance(var.get_value(), _Slot) and var.get_value().value is not None)]

    def sharding_of(path):
        return None if flat_shardings is None else flat_shardings[path].get_value()

    initialised = {}
    if missing:  # new heads and RNG streams: initialise just those, in their shards
        out = None if flat_shardings is None else [flat_shardings[path] for path in missing]
        initialised = dict(zip(missing, init(missing, out)))

    placed = []
    for path, var in flat_values.items():
        if path in initialised:
            placed.append((path, initialised[path]))
        else:
            slot = var.get_value()
            placed.append((path, var.replace(place_host_array(slot.value, sharding_of(path)))))
            slot.value = None  # the host copy (if any) goes as soon as it is placed
    if hasattr(tensors, "close"):
        tensors.close()
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
